"""Every fact about a variant lives in the registry (skippipe/variants.py): no other module of
the package spells a variant's name, so none can keep its own list of them or branch on one."""

import ast
from pathlib import Path

from skippipe.variants import VARIANTS
from test_layout import _modules

# (module, name): a registered name that is another thing's name too, or plain data, not a fact
ALLOWED = {
    # routing rules (schedule.Routing.rule) that the swarm variants share their names with
    ("routing", "swarm"),
    ("routing_step", "swarm-skip"),
    # a generator names the variant it builds: the registry's "plus its generator"
    ("planner.baselines", "baseline"),
    ("planner.baselines", "random"),
    ("planner.partial", "ca-partial"),
    ("planner.partial", "non-ca-partial"),
    # other things called "random": a search neighbourhood, an allocation start
    ("planner.lns", "random"),
    ("planner.skip_allocation", "random"),
    # argparse default: the variant a user trains when naming none
    ("commands.train", "baseline"),
    # the study's arms are stored runs of named schedule variants (its inputs.json keys)
    ("study.cli", "baseline"),
    ("study.cli", "ca-partial"),
    ("study.cli", "random"),
    ("study.report", "baseline"),
    ("study.plots", "baseline"),
    ("study.tables", "baseline"),
    ("study.plan", "baseline"),
    # the study's timing simulates the schedules its arms trained (and their backward split)
    ("study.times", "baseline"),
    ("study.times", "ca-partial"),
    ("study.times", "random"),
    ("study.times", "ca-partial-zb"),
    ("commands.study_times", "baseline"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def variant_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal in `path` equal to a registered variant name."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and n.value in VARIANTS
        and id(n) not in docs
    ]


def stray_variant_names() -> list[str]:
    return [
        f"{name}:{line} {value!r}"
        for name, path in sorted(_modules().items())
        if name != "variants"
        for line, value in variant_names_in(path)
        if (name, value) not in ALLOWED
    ]


def test_variant_facts_live_in_the_registry():
    stray = stray_variant_names()
    assert not stray, (
        "variant names outside skippipe/variants.py (put the fact in the registry, "
        "or allow it in ALLOWED with why): " + ", ".join(stray)
    )


def test_the_check_sees_a_variant_list(tmp_path):
    """The walk finds a name list like the ones the registry replaced, and skips docstrings."""
    module = tmp_path / "m.py"
    module.write_text('"""baseline"""\nFULL_PIPELINE = ("baseline", "gpipe")\n')
    assert variant_names_in(module) == [(2, "baseline"), (2, "gpipe")]


def test_allowed_entries_are_still_needed():
    """An allow-list entry nothing needs any more goes, so the list stays short and true."""
    mods = _modules()
    used = {(name, value) for name, path in mods.items() for _, value in variant_names_in(path)}
    assert not ALLOWED - used, f"stale ALLOWED entries: {sorted(ALLOWED - used)}"
