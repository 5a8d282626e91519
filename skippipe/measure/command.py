"""The `measure` command's work (its options are parsed by skippipe.commands.measure): one node's
measurement process, whose node 0 renders and writes the scenario, or `--local N` processes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SkipPipeError
from .figures import MIB, Settings
from .local import run_local
from .peers import peer_table
from .plan import plan, recorded_command
from .protocol import COORDINATOR, measure
from .scenario_out import memory_warnings, render_scenario, summary_lines, write_scenario


def run(args: argparse.Namespace) -> int:
    """The `measure` command: `--local N` processes on this host, or this host's one node."""
    if args.local is not None:
        return run_local(args)
    return run_node(args)


def run_node(args: argparse.Namespace) -> int:
    """This host's node until the coordinator says bye; node 0 then writes the scenario."""
    if args.node_id is None:
        raise SkipPipeError("give --node-id I (or --local N)")
    peers = peer_table(args)
    if args.node_id not in peers:
        raise SkipPipeError(f"--node-id {args.node_id} is not one of the nodes 0..{len(peers) - 1}")
    settings = Settings(args.repeat, args.warmup, max(1, round(args.payload_mib * MIB)), args.timeout)
    say = lambda line: print(line, flush=True)  # noqa: E731
    task = template = None
    if args.node_id == COORDINATOR:
        template, task, sizes = plan(args, len(peers))
    meas = measure(
        args.node_id,
        peers,
        settings,
        task,
        device=args.device,
        threads=args.threads or None,
        run_dir=args.run_dir,
        listen_host=args.listen,
        say=say,
    )
    if meas is None:
        return 0
    command = args.recorded_command or recorded_command()
    name = args.name or Path(args.out).stem
    text = render_scenario(template, meas, settings, name, command, sizes)
    sc = write_scenario(text, args.out)
    for line in summary_lines(meas, settings) + memory_warnings(meas, sc.pipeline.memory_slots):
        say(line)
    say(
        f"wrote {args.out}: scenario {sc.name}, {len(sc.nodes)} nodes, stages "
        f"{list(sc.pipeline.stage_sizes)}, k={sc.pipeline.path_length}; measured in {meas.wall_s:.1f} s"
    )
    say(f"plan it: python create_schedule.py {args.out}")
    return 0
