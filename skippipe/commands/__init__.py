"""Command-line commands, one module each (see skippipe/cli.py)."""
