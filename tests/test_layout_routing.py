"""Routing decides in one place: the simulator (skippipe/sim/) and the nodes (skippipe/runtime/)
call the routing step (routing_step.py) and never a router's decisions themselves.

The rule, checked on the code's syntax tree: outside routing.py and routing_step.py, a module of
sim/ or runtime/ may
- import from routing.py only what sets routing up or carries measurements (`ALLOWED`), and
- neither call a `Router` method or routing.py function that decides or ranks (every one of
  them but `ALLOWED`: next_hop, choose_node, choose_stage_set, expected_wait_s, ...), nor touch
  a router's `stage_sets` (swarm-skip's chosen sets), nor import `random` (a routing draw of
  its own).
"""

import ast

from conftest import ROOT

PACKAGE = ROOT / "skippipe"
ALLOWED = {
    "Router",
    "Report",
    "Live",
    "routers",
    "origins_only",
    "path_length",  # set-up
    "begin_iteration",
    "report",
    "observe",
    "__init__",
}  # per-iteration reset, measurements
STATE = {"stage_sets"}  # decision state only the routing core writes or reads


def decision_names() -> set[str]:
    """Every method of routing.py's classes and every function of it, less `ALLOWED`."""
    tree = ast.parse((PACKAGE / "routing.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names |= {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
    return names - ALLOWED


def violations(source: str, where: str, decisions: set[str]) -> list[str]:
    """Routing decisions made in `source` (a sim/ or runtime/ module) rather than called."""
    out = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "routing":
            out += [f"{line} imports {a.name} from routing" for a in node.names if a.name not in ALLOWED]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            out += [f"{line} imports random" for n in names if n == "random"]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in decisions:
                out.append(f"{line} calls {name}")
        elif isinstance(node, ast.Attribute) and node.attr in STATE:
            out.append(f"{line} touches {node.attr}")
    return out


def test_sim_and_runtime_only_call_the_routing_step():
    decisions = decision_names()
    assert {"next_hop", "choose_node", "choose_stage_set", "onward_of", "stage_budgets"} <= decisions
    found = []
    for folder in ("sim", "runtime"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            found += violations(path.read_text(), str(path.relative_to(ROOT)), decisions)
    assert found == []


def test_the_rule_catches_a_hop_decided_in_the_simulator():
    """What sim/online.py did before the routing step: it would fail the check."""
    old = """
from ..routing import Router, onward_of, stage_budgets
def _route(self, node, op):
    router = self.routers[node]
    router.stage_sets[op.microbatch] = self.sets[op.microbatch]
    nxt = router.next_hop(op.microbatch, self.paths[op.microbatch], self.live)
"""
    got = violations(old, "old", decision_names())
    assert sorted(g.split(" ", 1)[1] for g in got) == [
        "calls next_hop",
        "imports onward_of from routing",
        "imports stage_budgets from routing",
        "touches stage_sets",
    ]
