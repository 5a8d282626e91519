"""A node's part of a run's checkpoint: written at the end of a run that checkpoints, and by a
node that stops for want of a quorum (quorum.py), with the steps it took."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ...train.checkpoint import CheckpointInfo
from ...util.rundir import keep_in

if TYPE_CHECKING:
    from ...scenario import ModelConfig, Scenario
    from ...train.data import TokenData
    from .compute import StageCompute
    from .liveness import Liveness
    from .membership import Membership
    from .runconfig import RunConfig


class Saving(Protocol):
    """What a checkpoint reads of its node (node.py's Node)."""

    cfg: RunConfig
    id: int
    stage: int
    sc: Scenario
    model_cfg: ModelConfig
    n_microbatches: int
    data: TokenData | None
    members: Membership
    live: Liveness
    compute: StageCompute


def save_checkpoint(node: Saving, iterations: int) -> None:
    """Every node saves its stage; the lowest live node of each stage writes the stage file,
    and the first live data node the description too. `iterations`: the steps taken."""
    cfg = node.cfg
    alloc = node.members.allocation_at(max(iterations - 1, 0))
    live = [n for n in alloc[node.stage] if n not in node.live.dead]
    writer = bool(live) and live[0] == node.id
    info, directory = None, Path(cfg.run_dir) / "checkpoint"
    if writer and node.stage == 0 and node.data is not None:
        tokens = (
            iterations
            * node.n_microbatches
            * node.sc.pipeline.samples_per_microbatch
            * node.model_cfg.ctx_tokens
        )
        info = CheckpointInfo(
            node.model_cfg,
            node.sc.pipeline.n_stages,
            iterations,
            tokens,
            cfg.variant,
            node.sc.name,
            node.sc.content_hash,
            node.data.corpus_name,
            keep_in(directory, node.data.tokenizer_path),
            cfg.seed,
        )
    node.compute.save(directory, node.id, writer, info)
