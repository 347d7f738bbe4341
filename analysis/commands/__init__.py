"""One module per CLI verb (see analysis/cli.py)."""
