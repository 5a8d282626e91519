"""Documents, corpora and their train/validation split, with repeat removal and overlap groups.

A corpus is a tuple of documents with a content hash (the cache key of its tokenizer and token
arrays). The split is by document: a document goes to validation when the hash of its split key
falls below VALIDATION_FRACTION, so it is deterministic and stable when documents are added.
The split key is the document's `group` when it has one, else its id.

Validation must not contain text the model saw in training. Two tools keep it out:
- `drop_repeats(documents, min_words)`: the first occurrence of each unit (a verse, a paragraph)
  of at least `min_words` words is kept, later exact repeats are dropped (short formulas such as
  "Then Job answered," stay: they are ordinary language, not copied passages);
- `group_overlapping(documents, span_words)`: documents that share a passage of `span_words`
  words (parallel chapters, quoted passages) get one group, so the split keeps them together.

`shared_span_share(train, validation, span)` measures the result on token arrays: the share of
validation tokens that lie inside a span of `span` tokens also present in training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import SkipPipeError

VALIDATION_FRACTION = 0.1  # share of split keys (by hash) held out for validation
HASH_BASE = 1_000_003  # rolling-hash multiplier for token spans (odd, > any vocabulary)


class DataError(SkipPipeError):
    """A data source that cannot be read or is too small for the requested windows."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    group: str = ""  # documents of one group go to the same split ("": the document alone)

    @property
    def split_key(self) -> str:
        return self.group or self.doc_id


@dataclass(frozen=True)
class Corpus:
    name: str  # "web", "builtin", a path, or "hf:NAME"
    documents: tuple[Document, ...]
    content_hash: str  # sha256 (hex, 16 digits) of ids, groups and texts

    def split(self) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
        """(train, validation) documents, split by a hash of each document's split key."""
        train = tuple(d for d in self.documents if not is_validation(d.split_key))
        valid = tuple(d for d in self.documents if is_validation(d.split_key))
        return train, valid


def key_position(key: str) -> float:
    """Where a split key (document id or group) falls in [0, 1): its hash, the split's rule."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


def is_validation(key: str) -> bool:
    """True when a split key (document id or group) belongs to the validation split."""
    return key_position(key) < VALIDATION_FRACTION


def make_corpus(name: str, documents: Sequence[Document]) -> Corpus:
    """A corpus with its content hash; documents with no text are dropped."""
    docs = tuple(d for d in documents if d.text.strip())
    if not docs:
        raise DataError(f"{name}: no text found")
    digest = hashlib.sha256()
    for d in docs:
        digest.update(f"{len(d.doc_id)}:{d.doc_id}{len(d.group)}:{d.group}{len(d.text)}:".encode())
        digest.update(d.text.encode())
    return Corpus(name, docs, digest.hexdigest()[:16])


def drop_repeats(documents: Iterable[Sequence[str]], min_words: int) -> list[list[str]]:
    """Each document's units (verses, paragraphs) in order, without exact repeats of an earlier
    unit (in this or an earlier document) of at least `min_words` words."""
    seen: set[str] = set()
    out = []
    for units in documents:
        kept = []
        for unit in units:
            if len(unit.split()) >= min_words:
                if unit in seen:
                    continue
                seen.add(unit)
            kept.append(unit)
        out.append(kept)
    return out


def _shingles(text: str, span_words: int) -> set[int]:
    # Python's str hash: 64 bits, so a false link between two documents is vanishingly unlikely
    words = text.split()
    return {hash(" ".join(words[i : i + span_words])) for i in range(len(words) - span_words + 1)}


def group_overlapping(documents: Sequence[Document], span_words: int) -> list[Document]:
    """The documents with `group` set to the first id (in input order) of their component of
    the graph "shares a passage of `span_words` words"; documents sharing nothing keep group ""."""
    parent = list(range(len(documents)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_owner: dict[int, int] = {}
    for i, doc in enumerate(documents):
        for shingle in _shingles(doc.text, span_words):
            j = first_owner.setdefault(shingle, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the root is the component's first document
    sizes: dict[int, int] = {}
    for i in range(len(documents)):
        sizes[root(i)] = sizes.get(root(i), 0) + 1
    return [
        replace(d, group=documents[root(i)].doc_id if sizes[root(i)] > 1 else "")
        for i, d in enumerate(documents)
    ]


def _span_hashes(tokens: np.ndarray, span: int) -> np.ndarray:
    """A polynomial hash (mod 2^64) of every window of `span` tokens, one per start position."""
    t = tokens.astype(np.uint64)
    h = np.zeros(len(tokens) - span + 1, dtype=np.uint64)
    base = np.uint64(HASH_BASE)
    with np.errstate(over="ignore"):  # wrap-around is the modulus
        for k in range(span):
            h = h * base + t[k : len(tokens) - span + 1 + k]
    return h


def shared_span_share(train: np.ndarray, validation: np.ndarray, span: int) -> float:
    """Share of validation tokens covered by a window of `span` tokens that also occurs in train."""
    if len(validation) < span or len(train) < span:
        return 0.0
    seen = np.isin(_span_hashes(validation, span), _span_hashes(train, span))
    covered = np.zeros(len(validation) + 1, dtype=np.int64)
    starts = np.flatnonzero(seen)
    np.add.at(covered, starts, 1)
    np.add.at(covered, starts + span, -1)
    return float((np.cumsum(covered)[:-1] > 0).mean())
