"""Switching from insightface's arcface_torch: reading its config files, its key table, writing fr recipes."""
