"""Benchmarks: scripts that print figures, each side by side with its anchor."""
