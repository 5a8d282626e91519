"""Count-based reference perplexities: what a model must beat to have learned more than counts.

Both are fitted on the training tokens and scored on exactly the tokens the study scores: every
validation window's targets (token i+1 given token i inside a window; the first token of each
window is context only, as for the model).

- unigram, add-k: P(b) = (c(b) + k) / (N + k V)
- bigram, add-k:  P(b | a) = (c(a, b) + k) / (c(a) + k V), c(a) counting a as a context (every
  training token but the last)

Perplexity = exp(mean negative log-likelihood over the scored targets).
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_ADD_K = 0.1  # the smoothing the reference used


def _check(vocab_size: int, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            raise ValueError(f"token ids outside 0..{vocab_size - 1}")


def unigram_perplexity(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray,
                       vocab_size: int, k: float = DEFAULT_ADD_K) -> float:
    """Add-k unigram perplexity of `targets` (contexts are ignored; same signature as bigram)."""
    _check(vocab_size, train, targets)
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    probs = (counts + k) / (len(train) + k * vocab_size)
    return math.exp(-np.log(probs[targets]).mean())


def bigram_perplexity(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray,
                      vocab_size: int, k: float = DEFAULT_ADD_K) -> float:
    """Add-k bigram perplexity of `targets[i]` after `contexts[i]`."""
    _check(vocab_size, train, contexts, targets)
    pairs = train[:-1].astype(np.int64) * vocab_size + train[1:]
    joint = np.bincount(pairs, minlength=vocab_size * vocab_size).astype(np.float64)
    context = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    num = joint[contexts.astype(np.int64) * vocab_size + targets] + k
    den = context[contexts] + k * vocab_size
    return math.exp(-np.log(num / den).mean())


def window_pairs(batches) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, targets) of every prediction in validation batches [B, T+1]: position t
    predicts t+1, as the model's next-token loss does."""
    contexts = np.concatenate([b[:, :-1].reshape(-1).numpy() for b in batches])
    targets = np.concatenate([b[:, 1:].reshape(-1).numpy() for b in batches])
    return contexts, targets


def references(train: np.ndarray, batches, vocab_size: int,
               k: float = DEFAULT_ADD_K) -> dict[str, float]:
    """Unigram and bigram add-k perplexities over the targets of `batches`."""
    contexts, targets = window_pairs(batches)
    return {"unigram": unigram_perplexity(train, contexts, targets, vocab_size, k),
            "bigram": bigram_perplexity(train, contexts, targets, vocab_size, k),
            "add_k": k, "tokens": int(len(targets))}
