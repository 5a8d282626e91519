"""Perplexity of sparse pipelines: the model evaluated with some non-first stages omitted.

Omitting stages `O` means the evaluation path is every stage in increasing order except `O`
(stage 0 is never omitted: it embeds and scores). Perplexity is token level:
`exp(sum of next-token NLL / number of predicted tokens)` over the validation windows.
The omitted fraction is `|O| / (S - 1)`, the share of the non-first stages left out.

API:
- `omission_path(n_stages, omitted) -> tuple[int, ...]`
- `parse_stage_list(text, n_stages) -> tuple[int, ...]` ("2,4" -> (2, 4), validated)
- `path_nll(stages, batches, path) -> (nll_sum_nats, tokens)`
- `perplexity(stages, batches, omitted=()) -> Perplexity`
- `omission_subsets(n_stages, seed) -> list[tuple[int, ...]]` (all subsets when S <= 8)
- `sweep(stages, batches, subsets) -> list[Perplexity]`, `summarize(results) -> list[FractionSummary]`
- `sweep_table(summaries) -> str`, `plot_sweep({label: results}, png_path) -> Path`
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SkipPipeError
from ..util.tables import format_table
from .model import Stage, check_path, path_token_nll

SWEEP_EXHAUSTIVE_MAX_STAGES = 8  # S up to this: every subset of the non-first stages
SWEEP_SAMPLES_PER_SIZE = 8  # beyond: this many seeded subsets per omitted count
PROGRESS_EVERY_S = 5.0  # a sweep line at most this often
PLOT_DPI = 120  # dots per inch of the PNG
PLOT_SIZE_IN = (6.4, 4.2)  # figure width, height in inches


@dataclass(frozen=True)
class Perplexity:
    omitted: tuple[int, ...]  # stages left out (sorted)
    n_stages: int
    nll_sum: float  # nats, summed over predicted tokens
    tokens: int  # predicted tokens

    @property
    def fraction(self) -> float:
        """Share of the non-first stages omitted, 0..1."""
        return len(self.omitted) / (self.n_stages - 1)

    @property
    def mean_nll(self) -> float:
        """Mean next-token NLL, nats per token."""
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


@dataclass(frozen=True)
class FractionSummary:
    omitted_count: int
    fraction: float  # omitted_count / (S - 1)
    mean_perplexity: float  # mean over the evaluated subsets of this size
    min_perplexity: float
    max_perplexity: float
    subsets: int


def parse_stage_list(text: str, n_stages: int) -> tuple[int, ...]:
    """Parse "2,4" into sorted stage ids; each must be a distinct non-first stage."""
    try:
        stages = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SkipPipeError(f"--omit-stages {text!r}: expected comma-separated stage numbers") from None
    if len(set(stages)) != len(stages):
        raise SkipPipeError(f"--omit-stages {text!r}: a stage is listed twice")
    bad = [s for s in stages if not 1 <= s < n_stages]
    if bad:
        raise SkipPipeError(
            f"--omit-stages {text!r}: stage {bad[0]} is not one of 1..{n_stages - 1}"
            " (stage 0 cannot be omitted)"
        )
    return tuple(sorted(stages))


def omission_path(n_stages: int, omitted: Sequence[int]) -> tuple[int, ...]:
    """All stages in increasing order except `omitted` (which may not contain stage 0)."""
    if 0 in omitted:
        raise SkipPipeError("stage 0 cannot be omitted")
    return check_path([s for s in range(n_stages) if s not in set(omitted)], n_stages)


@torch.no_grad()
def path_nll(
    stages: Sequence[Stage], batches: Sequence[torch.Tensor], path: Sequence[int], progress=None
) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens along `path`;
    `progress` hears about every PROGRESS_EVERY_S seconds how many batches are scored."""
    device = next(stages[0].parameters()).device
    total, count, last = 0.0, 0, time.monotonic()
    for i, batch in enumerate(batches):
        nll = path_token_nll(stages, batch.to(device), path)
        total += float(nll.double().sum())
        count += nll.numel()
        if progress is not None and time.monotonic() - last > PROGRESS_EVERY_S:
            last = time.monotonic()
            progress(f"  {i + 1}/{len(batches)} batches scored")
    if count == 0:
        raise SkipPipeError("no validation tokens to evaluate")
    return total, count


def perplexity(
    stages: Sequence[Stage], batches: Sequence[torch.Tensor], omitted: Sequence[int] = (), progress=None
) -> Perplexity:
    """Token-level perplexity with the `omitted` stages skipped."""
    n_stages = len(stages)
    nll, tokens = path_nll(stages, batches, omission_path(n_stages, omitted), progress)
    return Perplexity(tuple(sorted(omitted)), n_stages, nll, tokens)


def omission_subsets(n_stages: int, seed: int) -> list[tuple[int, ...]]:
    """Subsets of the non-first stages to omit, from none to all, smallest first.

    Every subset when S <= SWEEP_EXHAUSTIVE_MAX_STAGES; otherwise, per omitted count, up to
    SWEEP_SAMPLES_PER_SIZE distinct subsets drawn with `seed`.
    """
    others = range(1, n_stages)
    out: list[tuple[int, ...]] = []
    rng = random.Random(seed)
    for size in range(n_stages):
        few = math.comb(n_stages - 1, size) <= SWEEP_SAMPLES_PER_SIZE
        if n_stages <= SWEEP_EXHAUSTIVE_MAX_STAGES or few:
            out.extend(itertools.combinations(others, size))
        else:
            picked: set[tuple[int, ...]] = set()
            while len(picked) < SWEEP_SAMPLES_PER_SIZE:
                picked.add(tuple(sorted(rng.sample(list(others), size))))
            out.extend(sorted(picked))
    return out


def sweep(
    stages: Sequence[Stage], batches: Sequence[torch.Tensor], subsets: Sequence[Sequence[int]], progress=None
) -> list[Perplexity]:
    """Perplexity for each omitted subset; `progress` (a print-like callable) hears about
    every PROGRESS_EVERY_S seconds how far the sweep is (a long sweep is not a hang)."""
    out, last = [], time.monotonic()
    for i, subset in enumerate(subsets):
        out.append(perplexity(stages, batches, subset))
        if progress is not None and time.monotonic() - last > PROGRESS_EVERY_S:
            last = time.monotonic()
            progress(f"sweep: {i + 1}/{len(subsets)} subsets scored")
    return out


def summarize(results: Sequence[Perplexity]) -> list[FractionSummary]:
    """Mean, min and max perplexity per omitted count."""
    by_count: dict[int, list[Perplexity]] = {}
    for r in results:
        by_count.setdefault(len(r.omitted), []).append(r)
    out = []
    for count, group in sorted(by_count.items()):
        ppl = [r.perplexity for r in group]
        out.append(
            FractionSummary(count, group[0].fraction, sum(ppl) / len(ppl), min(ppl), max(ppl), len(group))
        )
    return out


def sweep_table(summaries: Sequence[FractionSummary]) -> str:
    """A plain-text table: omitted count, fraction, mean/min/max perplexity, subsets."""
    rows = [
        (s.omitted_count, s.fraction, s.mean_perplexity, s.min_perplexity, s.max_perplexity, s.subsets)
        for s in summaries
    ]
    return format_table(
        ("omitted", "fraction", "mean ppl", "min ppl", "max ppl", "subsets"),
        rows,
        ("d", ".2f", ".2f", ".2f", ".2f", "d"),
        align=">" * 6,
    )


def plot_sweep(
    curves: Mapping[str, Sequence[Perplexity]],
    path: str | Path,
    title: str = "Perplexity of sparse pipelines",
) -> Path:
    """PNG of perplexity vs fraction omitted: one point per subset, a line through the means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=PLOT_SIZE_IN)
    for label, results in curves.items():
        summary = summarize(results)
        (line,) = ax.plot(
            [s.fraction for s in summary],
            [s.mean_perplexity for s in summary],
            marker="o",
            label=f"{label} (mean)",
        )
        ax.scatter(
            [r.fraction for r in results],
            [r.perplexity for r in results],
            s=10,
            alpha=0.4,
            color=line.get_color(),
        )
    ax.set_xlabel("fraction of non-first stages omitted")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path
