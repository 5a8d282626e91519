"""The study's fixed inputs, committed as skippipe/study/inputs.json so every run uses the same:

- `paths`: the microbatch paths (stage sequences) of each variant of the study scenario, taken
  from a planner schedule of it (`baseline` full pipelines, `random` network-blind skipping,
  `ca-partial` SkipPipe; `layerdrop` thins `baseline`'s, see layerdrop.py);
- `iteration_s`: the simulator's predicted iteration time of each variant on the geo-distributed
  scenario, taken from a schedule of it: the study's simulated wall-clock is iterations times it.

Both record the schedule they came from (scenario, content hash, solver provenance).
Refresh with:

    python create_schedule.py settings/study-6x2.toml --variants baseline random ca-partial \
        --workers 1 --out schedules/study-6x2.json
    python create_schedule.py settings/geo-distributed.toml --variants baseline random \
        ca-partial --workers 1 --out schedules/geo-distributed.json
    python -m skippipe.study --write-inputs schedules/study-6x2.json schedules/geo-distributed.json

`iteration_s` is the report's fallback: when the study's results hold a matching times.json
(`python -m skippipe study-times`, times.py: the trained paths on the study scenario against the
best full pipeline at equal memory), the time to target uses that instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from skippipe.errors import SkipPipeError

INPUTS_FILE = Path(__file__).resolve().parent / "inputs.json"
ITERATION_KEY = "iteration_s"  # the simulator's figure in a variant's `predicted`


@dataclass(frozen=True)
class StudyInputs:
    scenario: str  # the scenario the paths were planned for
    paths: dict[str, tuple[tuple[int, ...], ...]]  # variant -> one stage sequence per microbatch
    iteration_s: dict[str, float]  # variant -> predicted seconds per iteration (wall-clock model)
    wallclock_scenario: str
    provenance: dict


def _variant_paths(variant) -> tuple[tuple[int, ...], ...]:
    ordered = sorted(variant.paths, key=lambda p: p.microbatch)
    return tuple(tuple(h.stage for h in p.hops) for p in ordered)


def _source(path: Path, schedule, scenario) -> dict:
    return {
        "schedule": str(path),
        "scenario": scenario.name,
        "scenario_hash": scenario.content_hash,
        "solver": {name: asdict(v.provenance) for name, v in schedule.variants.items()},
    }


def build_inputs(paths_schedule: Path, times_schedule: Path) -> dict:
    """The inputs JSON from two schedule files (paths from the first, iteration times from the
    second)."""
    from skippipe.schedule_file import load_schedule

    sched, scenario = load_schedule(paths_schedule)
    times, geo = load_schedule(times_schedule)
    return {
        "scenario": scenario.name,
        "paths": {name: [list(p) for p in _variant_paths(v)] for name, v in sched.variants.items()},
        "wallclock_scenario": geo.name,
        "iteration_s": {name: v.predicted[ITERATION_KEY] for name, v in times.variants.items()},
        "provenance": {
            "paths": _source(paths_schedule, sched, scenario),
            "iteration_s": _source(times_schedule, times, geo),
        },
    }


def write_inputs(paths_schedule: Path, times_schedule: Path, out: Path = INPUTS_FILE) -> Path:
    out.write_text(json.dumps(build_inputs(paths_schedule, times_schedule), indent=1) + "\n")
    return out


def load_inputs(path: Path = INPUTS_FILE) -> StudyInputs:
    try:
        raw = json.loads(Path(path).read_text())
        return StudyInputs(
            raw["scenario"],
            {v: tuple(tuple(p) for p in ps) for v, ps in raw["paths"].items()},
            {v: float(t) for v, t in raw["iteration_s"].items()},
            raw["wallclock_scenario"],
            raw.get("provenance", {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SkipPipeError(f"{path}: not a study inputs file ({e})") from None


def reordered_paths(inputs: StudyInputs) -> tuple[tuple[int, ...], ...]:
    """Distinct trained paths (any variant) whose stages are not in increasing order, sorted."""
    found = {p for ps in inputs.paths.values() for p in ps if list(p) != sorted(p)}
    return tuple(sorted(found))
