"""ROC plot (PNG) of an IJB 1:1 evaluation, log-scaled FAR axis as in the IJB papers."""

from __future__ import annotations

from evaluation.errors import UserInputError
from evaluation.fileio import atomic_write
from evaluation.metrics import Roc


def plot_roc(roc: Roc, path: str, label: str = "model") -> None:
    """Write TPR against FPR (1e-6 .. 1, log x) to `path`; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserInputError(f"{path}: plotting needs matplotlib (pip install 'fr[plot]')") from exc
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(roc.fpr, roc.tpr, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("False Positive Rate")
    ax.set_ylabel("True Positive Rate")
    ax.grid(True, which="both", ls=":", lw=0.5)
    ax.legend(loc="lower right")
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
