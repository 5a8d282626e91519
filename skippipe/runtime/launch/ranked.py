"""One node started by torchrun or SLURM: `python -m skippipe node SETTINGS --variant V`.

The rank is the node id and the world size must be the scenario's node count; the rendezvous
is MASTER_ADDR:MASTER_PORT (under torchrun that address already serves torchrun's own store,
which only tells the nodes where the first of them serves the run's keyed store, until every
node is done: rendezvous.py; otherwise the first process on the master host serves it). torchrun
sets RANK/WORLD_SIZE; srun sets SLURM_PROCID/SLURM_NTASKS and the job script exports the
master address. The node then prepares its run as the launcher does (prepare.py: one run
directory per node, `<time>-<variant>-node<rank>-<pid>`) and runs in this process. Rank 0 prints
the whole run's loss per iteration and the summary, as a launcher would, and writes
`iterations.json` into its run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ...errors import SkipPipeError
from . import supervisor
from .prepare import RunOptions, prepared, scenario_for

RANK_VARIABLES = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))  # torchrun first


@dataclasses.dataclass(frozen=True)
class Rank:
    rank: int  # this process's node id
    world: int  # processes in the run: one per node of the scenario
    rendezvous: str  # HOST:PORT
    scope: str  # keeps a torchrun restart's registrations apart in torchrun's long-lived store


def rank_from_environment(env: Mapping[str, str], rendezvous: str | None = None) -> Rank:
    """The rank, world size and rendezvous address of this process, from torchrun's or SLURM's
    variables (`rendezvous` replaces MASTER_ADDR:MASTER_PORT); one clear error when missing."""
    names = next((pair for pair in RANK_VARIABLES if all(env.get(v) for v in pair)), None)
    if names is None:
        raise SkipPipeError(
            "no rank in the environment: start this form under torchrun (RANK, "
            "WORLD_SIZE) or srun (SLURM_PROCID, SLURM_NTASKS), or use "
            "`./run.sh FIRST LAST SETTING MB --rendezvous HOST:PORT`"
        )
    try:
        rank, world = (int(env[v]) for v in names)
    except ValueError:
        raise SkipPipeError(
            f"{names[0]}={env[names[0]]!r}, {names[1]}={env[names[1]]!r}: not whole numbers"
        ) from None
    if not 0 <= rank < world:
        raise SkipPipeError(f"{names[0]}={rank} is outside 0..{world - 1} ({names[1]}={world})")
    if rendezvous is None:
        if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise SkipPipeError(
                f"{names[0]} is set but MASTER_ADDR/MASTER_PORT are not: export "
                f"the rendezvous host and port, or give --rendezvous HOST:PORT"
            )
        rendezvous = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return Rank(rank, world, rendezvous, f"restart-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}")


def run_ranked(opts: RunOptions, rank: Rank, say=print) -> int:
    """Rendezvous, prepare and run node `rank.rank` in this process; its exit code."""
    from ..node.process import main
    from ..node.runconfig import save_config

    n_nodes = len(scenario_for(opts.scenario, opts.mb or None).nodes)
    if rank.world != n_nodes:
        raise SkipPipeError(
            f"world size {rank.world}, but {opts.scenario} has {n_nodes} nodes: start one process per node"
        )
    opts = dataclasses.replace(opts, first=rank.rank, last=rank.rank + 1, rendezvous=rank.rendezvous)
    with prepared(opts, say, run_name=f"{opts.setting}-node{rank.rank}", scope=rank.scope) as run:
        config = save_config(run.cfg)
        say(f"node {rank.rank} of {rank.world}: run directory {run.cfg.run_dir}")
        if rank.rank != 0:
            return main(str(config), rank.rank)
        with supervisor.followed(run.cfg, run.predicted_s, say) as progress:  # the whole run's lines
            code = main(str(config), rank.rank)
        say(supervisor.summary(progress.rows, run.cfg))
        return supervisor.verdict(code, progress, say)
