"""A small TOML writer (tomllib only reads): enough for scenario files."""

from __future__ import annotations

from collections.abc import Sequence

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dump_toml(doc: dict, header: Sequence[str] = ()) -> str:
    """TOML text for `doc`: top-level values first, then one [table] per dict value and one
    [[array]] entry per dict of a list of dicts. Inside a table, dicts are inline tables and a
    list of dicts is a multi-line array of inline tables. `header` lines become comments."""
    lines = [f"# {h}".rstrip() for h in header]
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if _dict_list(v)}
    for key, value in doc.items():
        if key not in tables and key not in arrays:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, table in tables.items():
        lines += ["", f"[{toml_key(key)}]", *_table_body(table)]
    for key, items in arrays.items():
        for item in items:
            lines += ["", f"[[{toml_key(key)}]]", *_table_body(item)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _dict_list(v) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _table_body(table: dict) -> list[str]:
    out = []
    for key, value in table.items():
        if value is None:  # TOML has no null: an unset key is left out (its default applies)
            continue
        if _dict_list(value):
            out += [f"{toml_key(key)} = [", *(f"  {toml_value(v)}," for v in value), "]"]
        else:
            out.append(f"{toml_key(key)} = {toml_value(value)}")
    return out


def toml_key(key: str) -> str:
    key = str(key)
    return key if key and set(key) <= _BARE_KEY else toml_string(key)


def toml_string(s: str) -> str:
    return (
        '"'
        + "".join(
            _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in s
        )
        + '"'
    )


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round trip; inf, -inf and nan are TOML too
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
        )
    raise TypeError(f"no TOML form for {type(v).__name__}")
