"""The LayerDrop baseline: in-order stochastic depth over whole stages.

Each microbatch of each iteration keeps stage 0 and each other stage independently with
probability p = (k - 1) / (S - 1), in increasing order, so its expected path length is k of S,
the same as a SkipPipe path. It asks whether SkipPipe's robustness to missing stages is more than
any stage dropout gives. The draws depend only on (seed, iteration), so a rerun trains the same
paths.
"""

from __future__ import annotations

import numpy as np

VARIANT = "layerdrop"


def keep_probability(path_length: int, n_stages: int) -> float:
    """p such that 1 + p (S - 1) = k."""
    return (path_length - 1) / (n_stages - 1)


def layerdrop_paths(
    n_paths: int, n_stages: int, keep: float, seed: int, iteration: int
) -> tuple[tuple[int, ...], ...]:
    """`n_paths` in-order paths: stage 0, then each other stage kept with probability `keep`."""
    rng = np.random.default_rng([seed, iteration])
    kept = rng.random((n_paths, n_stages - 1)) < keep
    return tuple((0,) + tuple(int(s) + 1 for s in np.flatnonzero(row)) for row in kept)
