"""Node 0's inputs, checked before anything is measured: the template scenario, the compute task
every node times, the stage sizes, and the command line recorded in the scenario file."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from ..errors import SkipPipeError
from .figures import ComputeTask
from .scenario_out import fit_pipeline


def recorded_command() -> str:
    """The command as the user typed it (best effort: `python -m skippipe ARGS`)."""
    argv = sys.argv[1:] if "measure" in sys.argv[1:] else ["measure", "..."]
    return shlex.join(["python", "-m", "skippipe", *argv])


def plan(args: argparse.Namespace, n_nodes: int):
    """(template Scenario, ComputeTask, stage sizes or None) from the command's options."""
    from ..scenario import load_scenario

    template = load_scenario(args.template)
    sizes = None
    if args.stage_sizes:
        try:
            sizes = [int(x) for x in args.stage_sizes.split(",")]
        except ValueError:
            raise SkipPipeError(f"--stage-sizes {args.stage_sizes!r}: expected e.g. 2,1,1") from None
    pipeline, _ = fit_pipeline(dataclasses.asdict(template.pipeline), template.model.n_layers, n_nodes, sizes)
    if len(pipeline["stage_sizes"]) < 2 or sum(pipeline["stage_sizes"]) != n_nodes:
        raise SkipPipeError(
            f"--stage-sizes {pipeline['stage_sizes']} must name >= 2 stages holding all {n_nodes} nodes"
        )
    samples = args.samples or template.pipeline.samples_per_microbatch
    if samples < 1:
        raise SkipPipeError("--samples must be >= 1")
    task = ComputeTask(
        dataclasses.asdict(template.model), len(pipeline["stage_sizes"]), samples, template.training.seed
    )
    return template, task, sizes
