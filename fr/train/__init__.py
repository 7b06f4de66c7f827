"""fr/train package."""
