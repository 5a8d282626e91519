"""The package's shape: imports only go down the layers, no import cycles, modules stay small."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "skippipe"
# Lower layers first; a module may import its own layer and the layers before it.
LAYERS = [
    {"errors"},
    {"settings_checks"},
    {"network"},
    {"variants"},  # the variant registry: every fact about a variant, read by all above it
    {"scenario", "ops", "events"},
    {"costs", "dispatch", "timeline", "memory", "placement", "failures"},
    {"schedule"},
    {"rules"},
    {"schedule_file", "schedule_summary"},  # a schedule read and written; its summary table
    {"util"},
    {
        "routing",
        "routing_step",
        "recovery",
        "rebalance",
    },  # online routing, repair, moves: used by the simulator and the runtime
    {"sim"},
    {"planner", "plan_options", "planning"},  # the planners; what a build is asked for; the build
    {"train"},
    {"study"},  # the sparse-pipeline study: trains in one process, reports from stored results
    {"runtime"},
    {"measure"},
    {"commands"},
    {"cli", "__main__", "__init__"},
]
MAX_LINES = 420  # "about 400"
NODE_MAX_LINES = 300  # runtime/node/node.py: lifecycle and the iteration loop only


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str], typing: bool = False) -> set[str]:
    """Modules of the package that `name` imports (at any depth of its code); with `typing`, also
    those imported for annotations only (under `if TYPE_CHECKING:`)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only and not typing:  # annotations only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("skippipe"):
                target = node.module.removeprefix("skippipe").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("skippipe.") for a in node.names if a.name.startswith("skippipe.")}
    return {m for m in found if m in known and m != name}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_imports_only_go_down():
    mods = _modules()
    upward = []
    for name, path in mods.items():
        for target in _imports(name, path, set(mods)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "upward imports: " + ", ".join(sorted(upward))


@pytest.mark.parametrize("typing", [False, True], ids=["run-time", "type-only"])
def test_no_import_cycles(typing):
    """No cycle, also none closed by an import for annotations only: a module that needs the
    type of a module importing it should take the parts it uses instead."""
    mods = _modules()
    graph = {name: _imports(name, path, set(mods), typing) for name, path in mods.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, trail):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(n) :] + [n]))
            if n not in state:
                visit(n, trail + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    big = {n: s for n, s in sizes.items() if s > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    assert sizes["runtime.node.node"] <= NODE_MAX_LINES


def test_only_ops_defines_the_op_chain():
    """No module but ops.py spells the chain F0..F(k-1), L, B(k-1)..B0 itself."""
    spelled = []
    for name, path in _modules().items():
        text = path.read_text()
        if name != "ops" and "reversed(range(" in text and ('"L"' in text or "OpKind.L" in text):
            spelled.append(name)
    assert not spelled, f"modules that build the op chain themselves: {spelled}"


def test_benches_are_modules_that_leave_the_path_alone():
    """Benches run as `python -m bench.NAME` from the repository root: none edits sys.path."""
    edits = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            target = getattr(node, "func", None)
            owner = getattr(target, "value", None)
            if (
                isinstance(owner, ast.Attribute)
                and owner.attr == "path"
                and getattr(owner.value, "id", None) == "sys"
            ):
                edits.append(f"{path.name}:{node.lineno}")
    assert (ROOT / "bench" / "__init__.py").exists()
    assert not edits, f"sys.path edited in {edits}"
