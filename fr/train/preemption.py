"""Stopping on a signal (Slurm preemption, `scancel`, a job's time limit): finish the step, checkpoint, exit.

A handler only records the signal; the trainer polls `requested()` in each step and the ranks agree in the
step's one small max-reduction (a rank that got no signal still stops at the same step, after that step), every
rank writes its checkpoint and the run ends with `TrainingInterrupted`. `fr-train` then exits with status
128 + the signal number, as a process killed by it would, so job scripts can requeue and continue with
`train.resume=auto`.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Dict, Optional, Sequence

log = logging.getLogger("fr.train")

# SIGTERM: what Slurm, Kubernetes and torchrun send first; SIGUSR1: Slurm's `--signal=USR1@SECONDS` warning.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(RuntimeError):
    """The run stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = (
            f"resumable checkpoint {checkpoint}; continue with train.resume=auto"
            if checkpoint
            else "no checkpoint written (output.save_state=false)"
        )
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: {where}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while active, the given signals are recorded instead of killing the process.

    Signal handlers can only be installed from the main thread; elsewhere (e.g. a Ray worker thread) this
    does nothing and `requested()` stays 0.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received = 0
        self._previous: Dict[int, object] = {}

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        if not self.received:
            log.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)
        self.received = self.received or signum

    def requested(self) -> int:
        """The first signal received (0 when none)."""
        return self.received

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
