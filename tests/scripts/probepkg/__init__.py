"""A package run with python -m probepkg (its __main__ reports like probe.py)."""
