"""fr: distributed large-scale face-recognition training (Partial FC, margin losses, RecordIO, verification)."""

__version__ = "0.1.0"
