"""The failure model: which node fails, when, and how (`FailureSpec`), its parsing from `--fail`
specs, JSON plans and a scenario's [faults] section, and what a simulated session makes of a plan
(`Condition`). The nodes fire the same specs (runtime/node/faults.py); the simulator models them at
iteration granularity.

A failure (`FailureSpec`) has the fields
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
JSON file of such objects.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from pathlib import Path

from .errors import SkipPipeError
from .scenario import Scenario

PHASES = ("start", "forward", "backward", "averaging")
HOWS = ("crash", "hang", "slow")
DEFAULT_SLOW_FACTOR = 4.0
_KEYS = {"node": int, "iteration": int, "phase": str, "after_ops": int, "how": str, "factor": float}


class FailurePlanError(SkipPipeError):
    pass


@dataclasses.dataclass(frozen=True)
class FailureSpec:
    """One planned failure (fields as in the module docstring); checked on construction."""

    node: int
    iteration: int = 0
    phase: str = "forward"
    after_ops: int = 0
    how: str = "crash"
    factor: float = DEFAULT_SLOW_FACTOR  # used by how="slow" only

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise FailurePlanError(f"phase must be one of {', '.join(PHASES)}")
        if self.how not in HOWS:
            raise FailurePlanError(f"how must be one of {', '.join(HOWS)}")
        if self.factor < 1:
            raise FailurePlanError("factor must be at least 1")
        if self.node < 0 or self.iteration < 0 or self.after_ops < 0:
            raise FailurePlanError("node, iteration and after_ops must be non-negative")

    @classmethod
    def parse(cls, entry: dict, where: str) -> FailureSpec:
        """A failure from its plain form (a plan entry, a --fail spec's pairs, a run config)."""
        if not isinstance(entry, dict):
            raise FailurePlanError(f"{where}: a failure must be an object, got {entry!r}")
        unknown = set(entry) - set(_KEYS)
        if unknown:
            raise FailurePlanError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(_KEYS)})")
        if "node" not in entry:
            raise FailurePlanError(f"{where}: a failure needs node=N")
        try:
            return cls(**{k: _KEYS[k](v) for k, v in entry.items()})
        except (TypeError, ValueError):
            raise FailurePlanError(f"{where}: bad value in {entry}") from None
        except FailurePlanError as e:
            raise FailurePlanError(f"{where}: {e}") from None

    @property
    def stops(self) -> bool:
        """The node stops taking part (crash or hang)."""
        return self.how in ("crash", "hang")

    def fires(self, it: int, phase: str, done_ops: int) -> bool:
        """Whether it happens now: in iteration `it`, before the next step of `phase` after
        `done_ops` operations ('start' fires at the first step of any phase)."""
        return self.iteration == it and self.phase in (phase, "start") and done_ops >= self.after_ops


def normalize(entry: dict, sc: Scenario, where: str) -> FailureSpec:
    """Check one failure against the scenario."""
    f = FailureSpec.parse(entry, where)
    if f.node >= len(sc.nodes):
        raise FailurePlanError(f"{where}: node {f.node} is not in the scenario (0..{len(sc.nodes) - 1})")
    return f


def parse_spec(spec: str, sc: Scenario) -> FailureSpec:
    """'node=3,iteration=1,phase=backward,how=crash' -> a normalized failure."""
    try:
        entry = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    except ValueError:
        raise FailurePlanError(f"--fail {spec!r}: expected key=value pairs separated by commas") from None
    return normalize({k.strip(): v.strip() for k, v in entry.items()}, sc, f"--fail {spec!r}")


def random_plan(
    sc: Scenario,
    rate: float,
    iterations: int,
    seed: int,
    how: str = "crash",
    protect: frozenset[int] = frozenset(),
) -> list[FailureSpec]:
    """Each node outside `protect` fails with probability `rate`, at a random iteration and phase."""
    rng = random.Random(seed)
    plan = []
    for n in sc.nodes:
        if n.id not in protect and rng.random() < rate:
            plan.append(
                normalize(
                    {
                        "node": n.id,
                        "iteration": rng.randrange(iterations),
                        "phase": rng.choice(PHASES[1:]),
                        "how": how,
                    },
                    sc,
                    "random plan",
                )
            )
    return plan


def parse_failures(specs: list[str], sc: Scenario) -> list[FailureSpec]:
    """Failures from --fail arguments (a spec may also be @FILE.json) plus the scenario's plan."""
    plan = []
    for spec in specs:
        if spec.startswith("@"):
            try:
                entries = json.loads(Path(spec[1:]).read_text())
            except (OSError, ValueError) as e:
                raise FailurePlanError(f"{spec[1:]}: not a failure plan ({e})") from None
            if not isinstance(entries, list):
                raise FailurePlanError(f"{spec[1:]}: a failure plan is a JSON list")
            plan += [normalize(e, sc, spec[1:]) for e in entries]
        else:
            plan.append(parse_spec(spec, sc))
    section = sc.extra.get("faults", {})
    plan += [normalize(e, sc, f"{sc.source}: faults.plan") for e in section.get("plan", [])]
    if section.get("random_rate"):
        plan += random_plan(
            sc, float(section["random_rate"]), sc.training.iterations, int(section.get("seed", 0))
        )
    return plan


@dataclasses.dataclass(frozen=True)
class Condition:
    """What a simulated session makes of a failure plan, by whole iterations: a crash or hang
    takes its node out from the start of its iteration until the iteration in `back` (a rejoin),
    a slow-down multiplies the node's operation times from its iteration on; phase and
    after_ops only place a failure within an iteration, which the session does not model."""

    failures: tuple[FailureSpec, ...] = ()
    back: Mapping[int, int] = dataclasses.field(default_factory=dict)  # node -> back from iteration

    def __post_init__(self) -> None:
        stopped = {f.node for f in self.failures if f.stops}
        if set(self.back) - stopped:
            raise FailurePlanError(
                f"--rejoin: node {sorted(set(self.back) - stopped)[0]} has no crash or hang to come back from"
            )

    def down(self, it: int) -> frozenset[int]:
        """The nodes out of iteration `it`."""
        return frozenset(
            f.node
            for f in self.failures
            if f.stops and f.iteration <= it and (f.node not in self.back or it < self.back[f.node])
        )

    def factors(self, it: int) -> dict[int, float]:
        """node -> the factor its operation times are multiplied by in iteration `it`."""
        return {f.node: f.factor for f in self.failures if not f.stops and it >= f.iteration}
