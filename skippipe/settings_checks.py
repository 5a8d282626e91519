"""The checks every settings file goes through: TOML that parses, tables with known keys of the
right types and positive values. A failed check raises ScenarioError naming the file and the key,
so commands print one line and exit 2."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from .errors import SkipPipeError


class ScenarioError(SkipPipeError):
    """A settings file that cannot be used; the message names the file and the key."""


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {e.start})") from None


def fail(path: Path | str, key: str, why: str) -> ScenarioError:
    return ScenarioError(f"{path}: {key}: {why}")


def section(
    path,
    data: dict,
    name: str,
    schema: dict,
    optional_keys=(),
    defaults: dict | None = None,
    zero_ok: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Check one table against its schema: no unknown keys, right types, positive numbers (zero
    too for the keys in `zero_ok`); a missing key takes its value from `defaults`, or is left out
    when it is one of `optional_keys`."""
    defaults = defaults or {}
    if not isinstance(data, dict):
        raise fail(path, name, "must be a table")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise fail(path, f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, typ in schema.items():
        full = f"{name}.{key}"
        if key not in data:
            if key in defaults:
                out[key] = defaults[key]
                continue
            if key in optional_keys:
                continue
            raise fail(path, full, "missing")
        out[key] = check_value(path, full, data[key], typ, key in zero_ok)
    return out


def check_value(path, full: str, value: Any, typ: type, zero_ok: bool):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
        raise fail(path, full, f"must be {typ.__name__}, got {value!r}")
    if typ in (int, float):
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise fail(path, full, f"must be {'non-negative' if zero_ok else 'positive'}, got {value}")
    return value


def positive_list(path, full: str, values: list, typ: type) -> tuple:
    if not values:
        raise fail(path, full, "must not be empty")
    return tuple(check_value(path, f"{full}[{i}]", v, typ, False) for i, v in enumerate(values))
