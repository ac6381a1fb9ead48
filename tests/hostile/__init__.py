"""Hostile-client reliability suite: see docs/reliability.md."""
