"""The benchmarks. Run each from the repository root as a module, with the project's
environment: `.venv/bin/python -m bench.NAME --help`. Their figures are recorded in
docs/benchmarks.md and docs/planner.md with the command that produced them."""
