"""A schedule's JSON form: `save_schedule` writes it (atomically), `load_schedule` reads it back,
checks it against its scenario (the content hash) and validates it with the one validator
(rules.py); `to_dict`/`from_dict` convert without files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .errors import ScheduleError
from .ops import Op, OpKind
from .rules import validate
from .scenario import Scenario, load_scenario
from .schedule import SCHEMA_VERSION, Hop, MicrobatchPath, Provenance, Routing, Schedule, VariantSchedule
from .variants import VARIANTS


def to_dict(s: Schedule) -> dict:
    return {
        "schema_version": s.schema_version,
        "scenario": {
            "name": s.scenario_name,
            "hash": s.scenario_hash,
            "path": s.scenario_path,
            "overrides": dict(s.scenario_overrides),
        },
        "allocation": {"stages": [list(nodes) for nodes in s.allocation]},
        "variants": {name: _variant_dict(v) for name, v in s.variants.items()},
    }


def _variant_dict(v: VariantSchedule) -> dict:
    out: dict[str, Any] = {
        "paths": [
            {
                "microbatch": p.microbatch,
                "origin": p.origin,
                "hops": [{"stage": h.stage, "node": h.node} for h in p.hops],
            }
            for p in v.paths
        ],
        "predicted": dict(v.predicted),
        "provenance": {**v.provenance.__dict__, "gap": v.provenance.gap},
        "dispatch": v.dispatch,
        "memory": v.memory,
        "loss_at": v.loss_at,
    }
    if v.activation_limits:
        out["activation_limits"] = [
            {"node": n, "limit": lim} for n, lim in sorted(v.activation_limits.items())
        ]
    if v.split_backward:
        out["backward"] = "split"
    if v.allocation is not None:
        out["allocation"] = {"stages": [list(nodes) for nodes in v.allocation]}
    if v.routing is not None:
        out["routing"] = dataclasses.asdict(v.routing)
    if v.order is not None:
        out["order"] = [
            {"node": n, "ops": [_op_dict(op) for op in ops]} for n, ops in sorted(v.order.items())
        ]
    return out


def _op_dict(op: Op) -> dict:
    d = {"kind": op.kind.value, "microbatch": op.microbatch, "hop": op.hop}
    if op.start_s is not None:
        d["start_s"] = round(op.start_s, 6)
    return d


def save_schedule(s: Schedule, path: str | Path) -> None:
    """Write atomically: a crash never leaves a half-written schedule."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # concurrent writers never share one
    tmp.write_text(json.dumps(to_dict(s), indent=1) + "\n")
    os.replace(tmp, path)


def from_dict(d: Any, where: str = "schedule") -> Schedule:
    """Parse the JSON form; structural problems raise ScheduleError naming the field."""
    try:
        return _from_dict(d)
    except ScheduleError as e:  # name the file: its messages name only the field
        raise ScheduleError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ScheduleError(f"{where}: malformed schedule ({type(e).__name__}: {e})") from None


def _from_dict(d: dict) -> Schedule:
    version = d.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION:
        raise ScheduleError(
            f"schema_version {version} is older than {SCHEMA_VERSION} (one allocation "
            f"per variant since 2): re-plan it with create_schedule.py"
        )
    if version != SCHEMA_VERSION:
        raise ScheduleError(f"schema_version {version!r} is not {SCHEMA_VERSION}")
    variants = {name: _variant_from(name, v) for name, v in d["variants"].items()}
    if not variants:
        raise ScheduleError("no variants: nothing to simulate or run (plan it with create_schedule.py)")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ScheduleError(f"unknown variant {sorted(unknown)[0]!r}")
    sc = d["scenario"]
    return Schedule(
        str(sc["name"]),
        str(sc["hash"]),
        str(sc.get("path", "")),
        _stages(d["allocation"]),
        variants,
        dict(sc.get("overrides", {})),
    )


def _int(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ScheduleError(f"expected an integer, got {x!r}")
    return x


def _variant_from(name: str, v: dict) -> VariantSchedule:
    paths = tuple(
        MicrobatchPath(
            _int(p["microbatch"]),
            _int(p["origin"]),
            tuple(Hop(_int(h["stage"]), _int(h["node"])) for h in p["hops"]),
        )
        for p in v["paths"]
    )
    order = None
    if v.get("order") is not None:
        order = {}
        for entry in v["order"]:
            ops = tuple(
                Op(
                    OpKind(o["kind"]),
                    _int(o["microbatch"]),
                    _int(o["hop"]),
                    None if o.get("start_s") is None else float(o["start_s"]),
                )
                for o in entry["ops"]
            )
            order[_int(entry["node"])] = ops
    prov = {k: val for k, val in v.get("provenance", {"solver": "none"}).items() if k != "gap"}
    limits = {
        _int(e["node"]): None if e["limit"] is None else _int(e["limit"])
        for e in v.get("activation_limits", [])
    }
    if any(lim is not None and lim < 1 for lim in limits.values()):
        raise ScheduleError(f"variant {name}: an activation limit must be at least 1 (or null)")
    if v.get("backward", "fused") not in ("fused", "split"):
        raise ScheduleError(f"variant {name}: backward {v['backward']!r} is not fused or split")
    alloc, routing = v.get("allocation"), v.get("routing")
    if routing is not None:
        routing = Routing(
            str(routing["rule"]),
            _int(routing["seed"]),
            _int(routing["seeds"]),
            float(routing["ema"]),
            float(routing["slow_factor"]),
            float(routing.get("rebalance", 0.0)),
            str(routing.get("choice", "weighted")),
        )
    return VariantSchedule(
        name,
        paths,
        order,
        {k: float(x) for k, x in v.get("predicted", {}).items()},
        Provenance(**prov),
        str(v.get("dispatch", "")),
        limits,
        v.get("backward") == "split",
        None if alloc is None else _stages(alloc),
        routing,
        str(v.get("memory", "")),
        str(v.get("loss_at", "origin")),
    )


def _stages(alloc: dict) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(_int(n) for n in nodes) for nodes in alloc["stages"])


def load_schedule(
    path: str | Path, scenario: Scenario | None = None, check: bool = True
) -> tuple[Schedule, Scenario]:
    """Read, parse and validate a schedule file against its scenario.

    The scenario is loaded from the path the schedule records unless one is given; a content
    hash mismatch (the settings changed since planning) is an error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ScheduleError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScheduleError(f"{path}: not valid JSON: {e}") from None
    sched = from_dict(raw, str(path))
    if scenario is None:
        if not sched.scenario_path or not Path(sched.scenario_path).is_file():
            raise ScheduleError(f"{path}: scenario file {sched.scenario_path!r} not found")
        scenario = load_scenario(sched.scenario_path, sched.scenario_overrides)
    if scenario.content_hash != sched.scenario_hash:
        raise ScheduleError(
            f"{path}: made for scenario {sched.scenario_name} hash "
            f"{sched.scenario_hash}, settings now hash {scenario.content_hash}: re-plan"
        )
    if check:
        validate(sched, scenario, where=str(path))
    return sched, scenario
