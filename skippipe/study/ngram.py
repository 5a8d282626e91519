"""Count-based reference perplexities: what a model must beat to have learned more than counts.

Every reference is fitted on the training tokens and scored on exactly the tokens the study
scores: every window's targets (token t+1 given the tokens up to t inside a window; the first
token of a window is context only, as for the model, and no reference looks back past it).

- unigram, add-k: P(b) = (c(b) + k) / (N + k V)
- bigram, add-k:  P(b | a) = (c(a, b) + k) / (c(a) + k V), c(a) counting a as a context (every
  training token but the last)
- interpolated Kneser-Ney of order n with modified discounts (Chen & Goodman 1998):
    P_n(w | h) = [max(c(hw) - D(c(hw)), 0) + (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) P_{n-1}(w | h')]
                 / c(h)
  where h' drops h's oldest token, Nj(h.) counts the words seen exactly j (3+: at least 3) times
  after h, and P_{n-1}(w | h') when c(h) = 0. The highest order counts n-grams; every lower order
  counts continuations (the number of distinct tokens seen before h'w), and the order-1
  distribution is interpolated with the uniform 1/V, so every token has a probability and the
  probabilities of a context sum to 1. Discounts per order: Y = n1 / (n1 + 2 n2),
  Dj = j - (j + 1) Y n(j+1) / nj from the counts-of-counts nj, clamped to [0, j]; with too few
  counts to estimate them, the plain D = Y (interpolated Kneser-Ney).

Perplexity = exp(mean negative log-likelihood over the scored targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_ADD_K = 0.1  # the add-k smoothing of the unigram and bigram lines
KN_ORDERS = (3, 4, 5)  # the Kneser-Ney lines the study draws


def _check(vocab_size: int, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"token ids outside 0..{vocab_size - 1}")


def unigram_perplexity(
    train: np.ndarray, contexts: np.ndarray, targets: np.ndarray, vocab_size: int, k: float = DEFAULT_ADD_K
) -> float:
    """Add-k unigram perplexity of `targets` (contexts are ignored; same signature as bigram)."""
    _check(vocab_size, train, targets)
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    probs = (counts + k) / (len(train) + k * vocab_size)
    return math.exp(-np.log(probs[targets]).mean())


def bigram_perplexity(
    train: np.ndarray, contexts: np.ndarray, targets: np.ndarray, vocab_size: int, k: float = DEFAULT_ADD_K
) -> float:
    """Add-k bigram perplexity of `targets[i]` after `contexts[i]`."""
    _check(vocab_size, train, contexts, targets)
    pairs = train[:-1].astype(np.int64) * vocab_size + train[1:]
    joint = np.bincount(pairs, minlength=vocab_size * vocab_size).astype(np.float64)
    context = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    num = joint[contexts.astype(np.int64) * vocab_size + targets] + k
    den = context[contexts] + k * vocab_size
    return math.exp(-np.log(num / den).mean())


# ----------------------------------------------------------------------------------------------
# Kneser-Ney.


def _keys(tokens: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """Every n-gram of `tokens` as one int64 (base-V digits, oldest token most significant)."""
    t = tokens.astype(np.int64)
    keys = np.zeros(len(t) - n + 1, dtype=np.int64)
    for i in range(n):
        keys = keys * vocab_size + t[i : len(t) - n + 1 + i]
    return keys


def discounts(counts: np.ndarray) -> np.ndarray:
    """(D0=0, D1, D2, D3+) from the counts-of-counts of `counts` (see the module docstring)."""
    n = [int((counts == j).sum()) for j in range(1, 5)]
    if n[0] == 0:
        return np.zeros(4)
    y = n[0] / (n[0] + 2 * n[1])
    if min(n) == 0:
        return np.array([0.0, y, y, y])
    d = [j - (j + 1) * y * n[j] / n[j - 1] for j in (1, 2, 3)]
    return np.array([0.0] + [min(max(x, 0.0), j) for j, x in zip((1, 2, 3), d)])


@dataclass(frozen=True)
class _Order:
    """One order's counts (n-gram or continuation) and, per context, its totals."""

    keys: np.ndarray  # sorted n-gram keys
    counts: np.ndarray  # their counts
    contexts: np.ndarray  # sorted context keys (key // V)
    totals: np.ndarray  # c(h): summed counts per context
    backoff: np.ndarray  # D1 N1(h.) + D2 N2(h.) + D3 N3+(h.) per context
    d: np.ndarray  # discounts by count (0, 1, 2, 3+)


def _order(keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Order:
    d = discounts(counts)
    mass = d[np.minimum(counts, 3)]
    contexts, start = np.unique(keys // vocab_size, return_index=True)
    return _Order(
        keys,
        counts,
        contexts,
        np.add.reduceat(counts, start).astype(np.float64),
        np.add.reduceat(mass, start),
        d,
    )


def _lookup(table: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[i] where table[i] == query, else 0."""
    at = np.minimum(np.searchsorted(table, query), len(table) - 1)
    return np.where(table[at] == query, values[at], 0)


class KneserNey:
    """Interpolated modified Kneser-Ney of order `order`, fitted on `train`."""

    def __init__(self, train: np.ndarray, order: int, vocab_size: int):
        if order < 1 or len(train) < order:
            raise ValueError(f"order {order} needs at least {order} training tokens")
        _check(vocab_size, train)
        self.order, self.vocab_size = order, vocab_size
        self.orders: list[_Order] = []
        for n in range(1, order + 1):
            if n == order:  # the highest order counts n-grams
                keys, counts = np.unique(_keys(train, n, vocab_size), return_counts=True)
            else:  # lower orders count distinct left extensions of each n-gram
                longer = np.unique(_keys(train, n + 1, vocab_size))
                keys, counts = np.unique(longer % vocab_size**n, return_counts=True)
            self.orders.append(_order(keys, counts, vocab_size))

    def probabilities(self, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """P(targets[i] | history[i]); history [N, order-1] int, -1 where a position has no
        token (before a window's start), oldest token first."""
        v = self.vocab_size
        p = np.full(len(targets), 1.0 / v)
        for n, table in enumerate(self.orders, start=1):
            ctx = np.zeros(len(targets), dtype=np.int64)
            known = np.ones(len(targets), dtype=bool)
            for col in range(self.order - n, self.order - 1):  # the last n-1 history tokens
                ctx = ctx * v + np.maximum(history[:, col], 0)
                known &= history[:, col] >= 0
            total = _lookup(table.contexts, table.totals, ctx)
            seen = known & (total > 0)
            count = _lookup(table.keys, table.counts, ctx * v + targets)
            mass = _lookup(table.contexts, table.backoff, ctx)
            kept = np.maximum(count - table.d[np.minimum(count, 3)], 0.0)
            safe = np.where(seen, total, 1.0)
            p = np.where(seen, (kept + mass * p) / safe, p)
        return p

    def perplexity(self, windows: np.ndarray) -> float:
        history, targets = window_histories(windows, self.order - 1)
        return math.exp(-np.log(self.probabilities(history, targets)).mean())


def window_histories(windows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(history [N, width], targets [N]) of every prediction in windows [B, T+1]: position t
    predicts t+1 from positions t-width+1..t of its own window (-1 before the window start)."""
    b, t1 = windows.shape
    padded = np.concatenate([np.full((b, width), -1, dtype=np.int64), windows.astype(np.int64)], axis=1)
    cols = [padded[:, i + 1 : i + t1] for i in range(width)]  # oldest first
    history = (
        np.stack(cols, axis=-1).reshape(-1, width) if width else np.zeros((b * (t1 - 1), 0), dtype=np.int64)
    )
    return history, windows[:, 1:].reshape(-1).astype(np.int64)


def window_pairs(batches) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, targets) of every prediction in batches [B, T+1]: position t predicts t+1, as
    the model's next-token loss does."""
    contexts = np.concatenate([b[:, :-1].reshape(-1).numpy() for b in batches])
    targets = np.concatenate([b[:, 1:].reshape(-1).numpy() for b in batches])
    return contexts, targets


def _split_references(train, batches, vocab_size: int, k: float, models) -> dict:
    contexts, targets = window_pairs(batches)
    out = {
        "unigram": unigram_perplexity(train, contexts, targets, vocab_size, k),
        "bigram": bigram_perplexity(train, contexts, targets, vocab_size, k),
        "add_k": k,
        "tokens": int(len(targets)),
    }
    for model in models:
        nll = [
            -np.log(model.probabilities(*window_histories(b.numpy(), model.order - 1))).sum() for b in batches
        ]
        out[f"kn{model.order}"] = math.exp(sum(nll) / len(targets))
    return out


def references(
    train: np.ndarray,
    splits: dict,
    vocab_size: int,
    k: float = DEFAULT_ADD_K,
    orders: tuple[int, ...] = KN_ORDERS,
) -> dict[str, dict]:
    """Per split (name -> batches [B, T+1]): unigram and bigram add-k and Kneser-Ney perplexities
    of its targets; each Kneser-Ney model is fitted once."""
    models = [KneserNey(train, n, vocab_size) for n in orders]
    return {
        name: _split_references(train, batches, vocab_size, k, models) for name, batches in splits.items()
    }
