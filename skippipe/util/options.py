"""Command options as data: a command module parses arguments, then hands the library one
frozen dataclass of them (so the library never sees argparse)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

T = TypeVar("T")


def options_from(cls: type[T], args: argparse.Namespace) -> T:
    """`cls` (a dataclass) filled from the namespace's attributes of the same names."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
