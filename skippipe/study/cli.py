"""`python -m skippipe.study`: the sparse-pipeline study, one resumable command.

    python -m skippipe.study --quick               # the whole pipeline at a small budget
    python -m skippipe.study --preset cpu          # the study (see docs/study.md)
    python -m skippipe.study --preset cpu --report-only   # tables and figures from the results
    python -m skippipe study-times --preset cpu    # iteration times for the time to target

Each finished run is a small JSON under --results (committed), its weights under --work (not);
a rerun skips every run whose settings match.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import SkipPipeError
from .inputs import INPUTS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = REPO_ROOT / "settings"
VARIANTS = ("baseline", "ca-partial", "random", "layerdrop")


@dataclass(frozen=True)
class Preset:
    settings: Path  # scenario: model, stages, paths' shape
    iterations: int
    lrs: tuple[float, ...]  # the sweep's first rates (extended until the best is interior)
    seeds: tuple[int, ...]
    evals: int  # validation scores per run
    device: str
    max_eval_windows: int | None = None  # None: every window of validation and test
    max_lr_extensions: int = 4  # rates added per variant while its best is at an edge


PRESETS = {  # docs/study.md gives the measurements behind the sizes
    "quick": Preset(SETTINGS / "study-6x2.toml", 40, (2e-3, 4e-3, 8e-3), (0, 1), 4, "cpu", 128, 1),
    "cpu": Preset(SETTINGS / "study-6x1.toml", 1000, (3e-3, 6e-3, 1.2e-2), (0, 1, 2, 3, 4), 10, "cpu"),
    "gpu": Preset(SETTINGS / "study-6x2-gpu.toml", 1000, (1e-3, 2e-3, 4e-3), (0, 1, 2, 3, 4), 10, "cuda"),
}


def _numbers(kind, what: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
        if not values or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value, each once")
        return values

    parse.__name__ = what
    return parse


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skippipe.study", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget (default cpu)")
    p.add_argument(
        "--quick", action="store_const", const="quick", dest="preset", help="the same as --preset quick"
    )
    p.add_argument("--results", help="committed JSON results (default results/study/PRESET)")
    p.add_argument("--work", help="checkpoints, not committed (default runs/study/PRESET)")
    p.add_argument("--settings", help="scenario: model and stages (default: the preset's)")
    p.add_argument("--inputs", default=str(INPUTS_FILE), help="paths and iteration times JSON")
    p.add_argument("--data", default="web", help="corpus (default: web, the World English Bible)")
    p.add_argument("--variants", type=_names, default=VARIANTS, help="comma-separated")
    p.add_argument("--lrs", type=_numbers(float, "rates"), help="first rates of the sweep")
    p.add_argument(
        "--max-lr-extensions",
        type=int,
        help="rates added per variant while its best is at an edge (default: preset's)",
    )
    p.add_argument("--seeds", type=_numbers(int, "seeds"), help="seeds; the sweep uses the first")
    p.add_argument("--iterations", type=int, help="optimizer steps per run")
    p.add_argument("--evals", type=int, help="validation scores per run")
    p.add_argument(
        "--max-eval-windows", type=int, help="score only the first N windows of each split (smoke tests)"
    )
    p.add_argument(
        "--target-ppl",
        type=float,
        action="append",
        help="time-to-target perplexity "
        "(repeatable; default: a range between the worst and best final validation ppl)",
    )
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one process each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (fingerprinted)")
    p.add_argument("--device", help="cpu or cuda (default: the preset's)")
    p.add_argument("--figures", help="directory for the PNGs (default: --work; docs for the record)")
    p.add_argument(
        "--report-only", action="store_true", help="tables and figures from the stored results; train nothing"
    )
    p.add_argument(
        "--write-inputs",
        nargs=2,
        metavar=("PATHS_SCHEDULE", "TIMES_SCHEDULE"),
        help="write --inputs from two schedule files and stop",
    )
    p.add_argument("--measure", help="tokens per CPU-second of sizes DxLxTxB,... and stop")
    p.add_argument("--measure-iterations", type=int, default=20, help="steps per --measure size")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, the preset filling every one not given."""
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.preset]
    for name in (
        "settings",
        "iterations",
        "lrs",
        "seeds",
        "evals",
        "device",
        "max_eval_windows",
        "max_lr_extensions",
    ):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    args.settings = str(args.settings)
    args.results = args.results or str(REPO_ROOT / "results" / "study" / args.preset)
    args.work = args.work or str(REPO_ROOT / "runs" / "study" / args.preset)
    if args.max_lr_extensions < 0:
        raise SkipPipeError("--max-lr-extensions must be 0 or more")
    if args.device not in ("cpu", "cuda"):
        raise SkipPipeError(f"--device {args.device!r}: use cpu or cuda")
    return args


def _measure(args) -> int:
    import json

    from ..scenario import load_scenario
    from .throughput import Size, measure

    scenario = load_scenario(args.settings)
    sizes = [Size.parse(s) for s in args.measure.split(",") if s]
    k = scenario.pipeline.path_length
    for size in sizes:
        for length in sorted({scenario.pipeline.n_stages, k}, reverse=True):
            print(json.dumps(measure(scenario, size, length, args.measure_iterations)), flush=True)
    return 0


def run(args) -> int:
    from .inputs import write_inputs
    from .plan import Study, execute
    from .report import collect, write_report

    if args.write_inputs:
        paths_schedule, times_schedule = map(Path, args.write_inputs)
        print(f"wrote {write_inputs(paths_schedule, times_schedule, Path(args.inputs))}")
        return 0
    if args.measure:
        return _measure(args)
    study = Study(args)
    if not args.report_only:
        if args.device == "cuda":
            from ..util.devices import resolve_device

            resolve_device("cuda")  # a clear error before any run starts
        execute(study)
    write_report(study, collect(study, compute_references=not args.report_only))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run(parse_args(argv))
    except SkipPipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
