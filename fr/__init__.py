"""fr package."""
