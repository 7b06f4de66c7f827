"""Plots (PNG) of IJB evaluations: the 1:1 ROC, and the 1:N DET and CMC curves; log-scaled false-alarm axes."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from evaluation.errors import UserInputError
from evaluation.fileio import atomic_write
from evaluation.metrics import Roc


def _pyplot(path: str):
    """matplotlib's pyplot on the Agg backend (no display needed); a one-line error naming `path` without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserInputError(f"{path}: plotting needs matplotlib (pip install 'fr[plot]')") from exc
    return plt


def _save(plt, fig, path: str) -> None:
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_roc(roc: Roc, path: str, label: str = "model") -> None:
    """Write TPR against FPR (1e-6 .. 1, log x) to `path`; needs matplotlib."""
    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(roc.fpr, roc.tpr, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.grid(True, which="both", ls=":", lw=0.5)
    ax.legend(loc="lower right")
    _save(plt, fig, path)


def plot_det_cmc(
    det: Dict[str, Tuple[np.ndarray, np.ndarray]],
    cmc: Dict[str, Tuple[np.ndarray, np.ndarray]],
    path: str,
    title: str = "",
) -> None:
    """Write two panels to `path`: per gallery the DET curve (FNIR against FPIR, log x) and the CMC curve
    (identification rate in percent against rank); needs matplotlib."""
    plt = _pyplot(path)
    fig, (ax_det, ax_cmc) = plt.subplots(1, 2, figsize=(11, 4.5))
    lowest = 1.0
    for name, (fpir, fnir) in det.items():
        shown = fpir > 0  # FPIR 0 has no place on a log axis
        if shown.any():
            ax_det.step(fpir[shown], fnir[shown], where="post", lw=1.2, label=name)
            lowest = min(lowest, float(fpir[shown].min()))
    ax_det.set_xscale("log")
    ax_det.set_xlim(min(1e-4, lowest), 1.0)
    ax_det.set_ylim(0.0, 1.0)
    ax_det.set_xlabel("False Positive Identification Rate (FPIR)")
    ax_det.set_ylabel("False Negative Identification Rate (FNIR)")
    ax_det.set_title("DET")
    for name, (ranks, rate) in cmc.items():
        ax_cmc.plot(ranks, rate, lw=1.2, marker=".", ms=3, label=name)
    ax_cmc.set_xlabel("Rank")
    ax_cmc.set_ylabel("Identification rate (%)")
    ax_cmc.set_ylim(0.0, 100.0)
    ax_cmc.set_title("CMC")
    for ax in (ax_det, ax_cmc):
        ax.grid(True, which="both", ls=":", lw=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    if title:
        fig.suptitle(title)
    _save(plt, fig, path)
