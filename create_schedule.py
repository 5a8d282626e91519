#!/usr/bin/env python3
"""Build a schedule: `python create_schedule.py settings/<scenario>.toml [--out PATH] [--seed N]`.

Thin wrapper over `python -m skippipe schedule`; see --help."""

import sys

from skippipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["schedule", *sys.argv[1:]]))
