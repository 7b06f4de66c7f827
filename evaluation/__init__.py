"""Face-recognition evaluation: LFW-style `.bin` verification, IJB-B/C 1:1 and 1:N, 5-point alignment, ROC metrics."""

from evaluation.align import align_face, similarity_transform
from evaluation.bin_format import load_bin, write_bin
from evaluation.embed import embed_images, verify_bin
from evaluation.metrics import auc, far_table, roc_curve
from evaluation.verification import BinVerification, evaluate

__all__ = [
    "evaluate",
    "BinVerification",
    "load_bin",
    "write_bin",
    "embed_images",
    "verify_bin",
    "align_face",
    "similarity_transform",
    "roc_curve",
    "auc",
    "far_table",
]
