"""One node process: started by the launcher (`./run.sh`) with its run's config.json and node
id, or by torchrun / SLURM with a settings file, its rank from the environment."""

from __future__ import annotations

import argparse
import os

from ..plan_options import DEFAULT_TIME_LIMIT_S
from ..util.rundir import RUNS_DIR
from ..variants import VARIANTS
from .run import DEFAULT_PEER_TIMEOUT_S, add_rendezvous_arguments

HELP = "run one node: of a launched run (the launcher starts these), or under torchrun / srun"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "examples (one process per node; every host holds the same run key in SKIPPIPE_RUN_KEY):\n"
        "  torchrun --nnodes 3 --nproc-per-node 2 --node-rank R --master-addr HOST --master-port 29400 \\\n"
        "      -m skippipe node settings/tiny.toml --variant ca-partial\n"
        "  MASTER_ADDR=HOST MASTER_PORT=29400 srun -n 6 python -m skippipe node settings/tiny.toml "
        "--variant ca-partial"
    )
    p.add_argument(
        "config",
        metavar="CONFIG|SETTINGS",
        help="runs/<run-id>/config.json written by the launcher, or (torchrun/SLURM) a settings file",
    )
    p.add_argument("node_id", type=int, nargs="?", help="the node to run (launcher form)")
    p.add_argument("--rejoin", action="store_true", help="come back into a running training (launcher form)")
    g = p.add_argument_group(
        "torchrun / SLURM form (rank from RANK or SLURM_PROCID, rendezvous at MASTER_ADDR:MASTER_PORT)"
    )
    g.add_argument("--variant", choices=VARIANTS, help="which paths to train along (required in this form)")
    g.add_argument("--mb", type=int, default=0, help="samples per microbatch (default: the scenario's)")
    g.add_argument(
        "--schedule",
        help="schedule file (default: node 0 plans or reuses schedules/<scenario>.json "
        "and hands it to the others)",
    )
    g.add_argument("--iterations", type=int, help="iterations to train (default: the scenario's)")
    g.add_argument("--time-scale", type=float, help="emulated time multiplier (default: the scenario's)")
    g.add_argument("--seed", type=int, help="training seed (default: the scenario's)")
    g.add_argument(
        "--host",
        help="address to listen on (default: this host's address on the route to the rendezvous host)",
    )
    g.add_argument(
        "--base-port", type=int, default=0, help="node i listens on base-port + i (default: a free port)"
    )
    g.add_argument("--runs", default=str(RUNS_DIR), help="parent of the node's run directory")
    g.add_argument("--run-key-file", metavar="PATH", help="the run's key (default: $SKIPPIPE_RUN_KEY)")
    g.add_argument(
        "--peer-timeout",
        type=float,
        default=DEFAULT_PEER_TIMEOUT_S,
        help="wall seconds before a silent peer counts as dead (default %(default)s)",
    )
    g.add_argument(
        "--plan-time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="CP-SAT seconds when node 0 plans (default %(default)s)",
    )
    add_rendezvous_arguments(g)


def run(args: argparse.Namespace) -> int:
    if args.node_id is not None:
        from ..runtime.node.process import main

        return main(args.config, args.node_id, args.rejoin)
    from ..errors import SkipPipeError
    from ..runtime.launch.prepare import RunOptions
    from ..runtime.launch.ranked import rank_from_environment, run_ranked
    from ..util.options import options_from

    if args.variant is None:
        raise SkipPipeError(
            "give NODE_ID after a run's config.json, or --variant V after a settings file "
            "(torchrun / SLURM form)"
        )
    rank = rank_from_environment(os.environ, args.rendezvous)
    vars(args).update(setting=args.variant, scenario=args.config, first=rank.rank, last=rank.rank + 1)
    return run_ranked(options_from(RunOptions, args), rank, lambda line: print(line, flush=True))
