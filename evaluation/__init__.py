"""Face-verification evaluation: insightface's 10-fold protocol, `.bin` sets, batched flip embedding."""
from evaluation.bin_format import load_bin, write_bin
from evaluation.embed import embed_images, verify_bin
from evaluation.verification import VerificationResult, evaluate

__all__ = ["evaluate", "VerificationResult", "load_bin", "write_bin", "embed_images", "verify_bin"]
