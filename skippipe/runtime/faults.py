"""Failure plans: which node fails, when, and how.

A failure is a dict with keys
  node       node id
  iteration  iteration in which it happens (default 0)
  phase      'forward' | 'backward' | 'averaging' | 'start' (default 'forward'): the node fails
             when it is about to run its first operation of that kind in that iteration
             ('start': as the iteration begins)
  after_ops  how many operations of that phase it completes first (default 0)
  how        'crash' (the process dies at once, like kill -9) | 'hang' (stops answering but
             stays alive) | 'slow' (its compute and its outgoing links are slowed)
  factor     slow-down factor for 'slow' (default 4)
Plans come from `--fail node=3,iteration=1,phase=backward,how=crash`, a scenario's [faults]
section (`plan = [{node = 3, ...}]`, or `random_rate` + `seed` for a seeded random plan), or a
JSON file of such dicts.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import SkipPipeError
from ..scenario import Scenario

PHASES = ("start", "forward", "backward", "averaging")
HOWS = ("crash", "hang", "slow")
DEFAULT_SLOW_FACTOR = 4.0
_KEYS = {"node": int, "iteration": int, "phase": str, "after_ops": int, "how": str, "factor": float}


class FailurePlanError(SkipPipeError):
    pass


def normalize(entry: dict, sc: Scenario, where: str) -> dict:
    """Check one failure and fill in defaults."""
    unknown = set(entry) - set(_KEYS)
    if unknown:
        raise FailurePlanError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(_KEYS)})")
    if "node" not in entry:
        raise FailurePlanError(f"{where}: a failure needs node=N")
    f = {"iteration": 0, "phase": "forward", "after_ops": 0, "how": "crash", **entry}
    try:
        f = {k: _KEYS[k](v) for k, v in f.items()}
    except (TypeError, ValueError):
        raise FailurePlanError(f"{where}: bad value in {entry}") from None
    if not 0 <= f["node"] < len(sc.nodes):
        raise FailurePlanError(f"{where}: node {f['node']} is not in the scenario (0..{len(sc.nodes) - 1})")
    if f["phase"] not in PHASES:
        raise FailurePlanError(f"{where}: phase must be one of {', '.join(PHASES)}")
    if f["how"] not in HOWS:
        raise FailurePlanError(f"{where}: how must be one of {', '.join(HOWS)}")
    if f["how"] == "slow":
        f.setdefault("factor", DEFAULT_SLOW_FACTOR)
        if f["factor"] < 1:
            raise FailurePlanError(f"{where}: factor must be at least 1")
    if f["iteration"] < 0 or f["after_ops"] < 0:
        raise FailurePlanError(f"{where}: iteration and after_ops must be non-negative")
    return f


def parse_spec(spec: str, sc: Scenario) -> dict:
    """'node=3,iteration=1,phase=backward,how=crash' -> a normalized failure."""
    try:
        entry = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    except ValueError:
        raise FailurePlanError(f"--fail {spec!r}: expected key=value pairs separated by commas") from None
    return normalize({k.strip(): v.strip() for k, v in entry.items()}, sc, f"--fail {spec!r}")


def random_plan(sc: Scenario, rate: float, iterations: int, seed: int,
                how: str = "crash", protect: frozenset[int] = frozenset()) -> list[dict]:
    """Each node outside `protect` fails with probability `rate`, at a random iteration and phase."""
    rng = random.Random(seed)
    plan = []
    for n in sc.nodes:
        if n.id not in protect and rng.random() < rate:
            plan.append(normalize({"node": n.id, "iteration": rng.randrange(iterations),
                                   "phase": rng.choice(PHASES[1:]), "how": how}, sc, "random plan"))
    return plan


def parse_failures(specs: list[str], sc: Scenario) -> list[dict]:
    """Failures from --fail arguments (a spec may also be @FILE.json) plus the scenario's plan."""
    plan = []
    for spec in specs:
        if spec.startswith("@"):
            try:
                entries = json.loads(Path(spec[1:]).read_text())
            except (OSError, ValueError) as e:
                raise FailurePlanError(f"{spec[1:]}: not a failure plan ({e})") from None
            plan += [normalize(e, sc, spec[1:]) for e in entries]
        else:
            plan.append(parse_spec(spec, sc))
    section = sc.extra.get("faults", {})
    plan += [normalize(e, sc, f"{sc.source}: faults.plan") for e in section.get("plan", [])]
    if section.get("random_rate"):
        plan += random_plan(sc, float(section["random_rate"]), sc.training.iterations,
                            int(section.get("seed", 0)))
    return plan
