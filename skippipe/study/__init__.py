"""The sparse-pipeline study: does training on skip paths cost perplexity, and does it make the
model robust to missing stages? `python -m skippipe.study` (cli.py); docs/study.md explains it.

Modules: cli (options, presets), plan (which runs, learning-rate sweep), runs (one training run
or sparse-pipeline sweep, resumable JSON results), layerdrop (the stochastic-depth baseline),
inputs (the committed paths and iteration times), ngram (count-based references), stats (seed
statistics), report (the numbers from stored results), tables and plots (their presentation),
throughput (tokens per CPU-second per model size).
"""
