"""fr/data package."""
