"""Run a function on N local processes joined in a gloo group and collect each rank's result.

Tests get `run_distributed` as a fixture (tests/conftest.py):

    def _worker(rank, world_size, scale):          # module level, so spawned processes can unpickle it
        env = fr.distributed.env_from_group()      # the group is already initialised
        ...
        return {"loss": loss.item()}               # anything torch.save can pickle

    def test_it(run_distributed):
        results = run_distributed(_worker, 2, 3.0) # [result of rank 0, result of rank 1]

Each worker runs with torch.set_num_threads(1), on CPU, in a process forked from a fork server that has
imported torch and fr's training stack once (a spawned process would spend seconds of CPU importing them
again, every call); it imports the worker's module by name (tests is a package, so `tests.test_foo`) and
takes the caller's environment variables and working directory as they are at the call. An exception in any
worker fails the call with that worker's traceback; a collective that never completes fails after
`timeout_s` instead of hanging the test run.
"""

from __future__ import annotations

import os
import socket
import tempfile
from datetime import timedelta
from typing import Any, Callable, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fr.distributed import cleanup

_PORT_ATTEMPTS = 3
# Imported once by the fork server (an import that fails there is left to the worker).
_PRELOAD = ["torch", "torch._dynamo", "fr.train.run", "tests.helpers.distributed"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    out_dir: str,
    timeout_s: float,
    args: tuple,
    environ: Dict[str, str],
    cwd: str,
) -> None:
    # A forked worker inherits the fork server's environment from when it started, not the caller's now.
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    # On failure the exception propagates without tearing the group down: a destroy could wait on peers
    # still inside a collective, and mp.spawn terminates them anyway.
    result = fn(rank, world_size, *args)
    cleanup()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0) -> List[Any]:
    """Call `fn(rank, world_size, *args)` in `world_size` gloo processes; return the results ordered by rank.

    `fn` and `args` must be picklable (define `fn` at module level). The group uses a free TCP port on
    127.0.0.1; if another process grabs that port before the group binds it, the run is retried.
    """
    mp.set_forkserver_preload(_PRELOAD)
    for attempt in range(_PORT_ATTEMPTS):
        with tempfile.TemporaryDirectory(prefix="fr_dist_") as out_dir:
            try:
                mp.start_processes(
                    _worker,
                    args=(fn, world_size, free_port(), out_dir, timeout_s, args, dict(os.environ), os.getcwd()),
                    nprocs=world_size,
                    join=True,
                    start_method="forkserver",
                )
            except mp.ProcessRaisedException as exc:
                if "address already in use" in str(exc).lower() and attempt + 1 < _PORT_ATTEMPTS:
                    continue
                raise
            return [
                torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False) for rank in range(world_size)
            ]
    raise AssertionError("unreachable")
