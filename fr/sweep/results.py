"""A finished (or interrupted) sweep's results: one row per trial, the console table, sweep_results.csv and
.json, best_config.json and the plot of the metric against steps."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from evaluation.fileio import atomic_write, atomic_write_json, atomic_write_text
from fr.config import load_file, save_config

RESULTS_CSV = "sweep_results.csv"
RESULTS_JSON = "sweep_results.json"
BEST_CONFIG = "best_config.json"
PLOT = "sweep_metric.png"
BEST_RUN = "best"  # output.dir of best_config.json: `fr-train best_config.json` retrains there


@dataclass
class TrialRow:
    """One trial: `status` is completed, stopped early (by the scheduler), error, or Tune's own state
    (pending, paused, running) when the sweep was interrupted; `value` is the metric's last report."""

    trial: str
    status: str
    params: Dict[str, Any]
    steps: int = 0
    total_steps: int = 0
    value: Optional[float] = None
    best: Optional[float] = None  # over every report, by the sweep's mode
    output: str = ""
    error: str = ""
    history: List[Tuple[int, float]] = field(default_factory=list)  # (step, metric) of every report


def status_of(tune_status: str, steps: int, total_steps: int) -> str:
    if tune_status == "TERMINATED":
        return "completed" if total_steps and steps >= total_steps else "stopped early"
    return tune_status.lower()


def _number(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def make_row(
    trial: str,
    tune_status: str,
    params: Dict[str, Any],
    reports: Sequence[Dict[str, Any]],
    metric: str,
    mode: str,
    output: str,
    error: str = "",
) -> TrialRow:
    """A trial's row from its reports (dicts with `step`, `total_steps` and the metric), in report order."""
    history = [
        (int(r["step"]), value) for r in reports if "step" in r and (value := _number(r.get(metric))) is not None
    ]
    last = reports[-1] if reports else {}
    steps, total = int(last.get("step", 0) or 0), int(last.get("total_steps", 0) or 0)
    pick = max if mode == "max" else min
    return TrialRow(
        trial=trial,
        status="error" if error else status_of(tune_status, steps, total),
        params=dict(params),
        steps=steps,
        total_steps=total,
        value=_number(last.get(metric)),
        best=pick(v for _, v in history) if history else None,
        output=output,
        error=error,
        history=history,
    )


def best_row(rows: Sequence[TrialRow], mode: str) -> Optional[TrialRow]:
    """The trial with the best last value, among those that trained to the end when any did."""
    scored = [row for row in rows if row.value is not None]
    finished = [row for row in scored if row.status == "completed"] or scored
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda row: row.value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Sequence[TrialRow], metric: str) -> str:
    """The console table: trial, parameters, metric (last report), steps, status."""
    keys = sorted({key for row in rows for key in row.params})
    header = ["trial"] + keys + [metric, "steps", "status"]
    lines = [
        [row.trial]
        + [_short(row.params.get(key, "")) for key in keys]
        + ["" if row.value is None else f"{row.value:.4f}", f"{row.steps}/{row.total_steps or '?'}", row.status]
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule] + [fmt.format(*line) for line in lines])


def to_csv(rows: Sequence[TrialRow], metric: str) -> str:
    keys = sorted({key for row in rows for key in row.params})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "status", "steps", "total_steps", metric, f"best_{metric}"] + keys + ["output", "error"])
    for row in rows:
        writer.writerow(
            [row.trial, row.status, row.steps, row.total_steps, row.value, row.best]
            + [row.params.get(key, "") for key in keys]
            + [row.output, row.error]
        )
    return out.getvalue()


def write_best_config(row: TrialRow, out_dir: str) -> str:
    """The best trial's resolved config (its config.json) as best_config.json: output.dir is `<output>/best`
    and train.resume is cleared, so `fr-train best_config.json` trains it again from scratch beside the sweep
    instead of resuming or overwriting the trial's run."""
    cfg = load_file(os.path.join(row.output, "config.json"))
    cfg.output.dir = os.path.join(os.path.abspath(out_dir), BEST_RUN)
    cfg.train.resume = ""
    cfg.output.overwrite = False
    path = os.path.join(out_dir, BEST_CONFIG)
    save_config(cfg, path)
    return path


def plot(rows: Sequence[TrialRow], metric: str, path: str) -> str:
    """The metric against training steps, one line per trial (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for row in rows:
            if row.history:
                steps, values = zip(*row.history)
                params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(row.params.items()))
                ax.plot(steps, values, marker="o", markersize=3, label=f"{row.trial} ({params})")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def write_sweep_results(rows: Sequence[TrialRow], metric: str, mode: str, out_dir: str) -> Dict[str, Any]:
    """Write sweep_results.csv/.json, best_config.json (when a trial has a value) and the plot; returns the
    JSON document."""
    best = best_row(rows, mode)
    document = {
        "metric": metric,
        "mode": mode,
        "best_trial": best.trial if best else None,
        "best_config": os.path.join(out_dir, BEST_CONFIG) if best else None,
        "trials": [dataclasses.asdict(row) for row in rows],
    }
    atomic_write_text(os.path.join(out_dir, RESULTS_CSV), to_csv(rows, metric))
    atomic_write_json(os.path.join(out_dir, RESULTS_JSON), json.loads(json.dumps(document)))
    if best is not None:
        write_best_config(best, out_dir)
    plot(rows, metric, os.path.join(out_dir, PLOT))
    return document
