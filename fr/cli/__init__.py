"""Thin command-line front ends: fr-train, fr-data, fr-eval."""
