"""Corpus split, tokenizer caching and determinism, batch iterators."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

import skippipe.train.tokenizer as tokenizer_module
from skippipe.train.corpus import is_validation
from skippipe.train.data import (
    DataError,
    Document,
    builtin_corpus,
    hf_corpus,
    local_corpus,
    make_corpus,
    module_text,
    prepare_data,
    training_batches,
    validation_batches,
)
from skippipe.train.tokenizer import TokenizerError, load_tokenizer, train_tokenizer

VOCAB = 64
WORDS = (
    "the stage node path pipeline skips layers while training converges on a network of "
    "heterogeneous links with latency and bandwidth between locations"
).split()


def _write_corpus(directory, n_files=3, paragraphs=40, seed=0):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        paras = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(paragraphs)
        ]
        (directory / f"part{f}.txt").write_text("\n\n".join(paras))
    return directory


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPPIPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_local_corpus_documents_and_split(tmp_path):
    corpus = local_corpus(_write_corpus(tmp_path / "text"))
    assert len(corpus.documents) == 120
    assert corpus.documents[0].doc_id == "part0.txt#0"
    train, valid = corpus.split()
    assert train and valid and len(train) + len(valid) == 120
    assert {d.doc_id for d in valid} == {d.doc_id for d in corpus.documents if is_validation(d.doc_id)}
    assert local_corpus(tmp_path / "text").content_hash == corpus.content_hash
    single = local_corpus(tmp_path / "text" / "part1.txt")
    assert len(single.documents) == 40 and single.content_hash != corpus.content_hash


def test_missing_or_empty_sources_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        local_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        local_corpus(tmp_path / "empty")
    with pytest.raises(DataError, match="no text"):
        make_corpus("x", [Document("a", "  \n")])


def test_hf_source_is_a_clear_error_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="not available offline"):
        hf_corpus("hf:wikitext")


def test_tokenizer_is_cached_and_not_retrained(tmp_path, cache, monkeypatch):
    source = _write_corpus(tmp_path / "text")
    calls = []
    real = tokenizer_module.train_tokenizer
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = prepare_data(source, VOCAB)
    second = prepare_data(source, VOCAB)
    assert len(calls) == 1
    assert first.tokenizer_path == second.tokenizer_path and first.tokenizer_path.parent == cache
    assert np.array_equal(first.train, second.train)
    assert np.array_equal(first.validation, second.validation)
    other = prepare_data(source, VOCAB + 8)  # another vocabulary: another tokenizer
    assert len(calls) == 2 and other.tokenizer_path != first.tokenizer_path
    given = prepare_data(source, VOCAB, tokenizer=first.tokenizer_path)
    assert len(calls) == 2 and np.array_equal(given.train, first.train)


def test_tokenizer_training_is_deterministic(tmp_path):
    corpus = local_corpus(_write_corpus(tmp_path / "text"))
    lines = [d.text for d in corpus.split()[0]]
    a, b = train_tokenizer(lines, VOCAB), train_tokenizer(lines, VOCAB)
    assert a == b


def test_tokenizer_checks(tmp_path, cache):
    source = _write_corpus(tmp_path / "text")
    data = prepare_data(source, VOCAB)
    with pytest.raises(TokenizerError, match="exceed"):
        load_tokenizer(data.tokenizer_path, max_vocab=8)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path / "junk.model")
    eos = load_tokenizer(data.tokenizer_path).eos_id()
    assert data.train.dtype == np.int32 and (data.train == eos).sum() > 10


def test_training_batches_are_seeded_windows():
    tokens = np.arange(1000, dtype=np.int32)
    a = training_batches(tokens, 4, 16, seed=1)
    b = training_batches(tokens, 4, 16, seed=1)
    x, y = next(a), next(b)
    assert x.shape == (4, 17) and x.dtype == torch.int64 and torch.equal(x, y)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 16, dtype=torch.int64))  # contiguous
    assert not torch.equal(next(a), x)
    assert not torch.equal(next(training_batches(tokens, 4, 16, seed=2)), x)
    with pytest.raises(DataError):
        next(training_batches(tokens[:10], 4, 16, seed=1))


def test_validation_batches_score_each_token_once():
    tokens = np.arange(1, 102, dtype=np.int32)  # 101 tokens -> 10 windows of 10 predictions
    batches = validation_batches(tokens, 4, 10)
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    targets = torch.cat([b[:, 1:].flatten() for b in batches])
    assert targets.tolist() == list(range(2, 102))
    assert sum(b.shape[0] for b in validation_batches(tokens, 4, 10, max_batches=2)) == 8


def test_module_text_collects_docstrings():
    import json as mod

    text = module_text(mod)
    assert "JSON" in text and mod.dumps.__doc__.strip().splitlines()[0] in text


def test_builtin_corpus_is_extracted_once(cache):
    corpus = builtin_corpus()
    ids = [d.doc_id for d in corpus.documents]
    assert any(i.startswith("pydoc:") for i in ids) and "stdlib:json" in ids
    assert "stdlib:this" not in ids and not any(i.startswith("stdlib:idlelib") for i in ids)
    assert sum(len(d.text) for d in corpus.documents) > 1_000_000  # characters
    cached = list(cache.glob("builtin-corpus-*.json"))
    assert len(cached) == 1
    assert builtin_corpus().content_hash == corpus.content_hash
