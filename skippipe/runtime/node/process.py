"""A node's process around its Node (node.py): the entry point that `skippipe node` and the
torchrun / SLURM form (launch/ranked.py) call.

Kept apart from node.py because it is about the operating-system process, not the node's
lifecycle: it loads the run config, sets torch's threads and the log format, runs the node's
event loop and turns how it ended into the exit code the launcher reads (0; QUORUM_EXIT, after
saving the stage when the run checkpoints; 1 on a node failure or a SkipPipe error).
"""

from __future__ import annotations

import asyncio
import logging

import torch

from ...errors import SkipPipeError
from .checkpoint import save_checkpoint
from .messenger import NodeFailure
from .node import Node
from .quorum import QUORUM_EXIT, QuorumLost

log = logging.getLogger(__name__)


def main(config_path: str, node_id: int, rejoin: bool = False) -> int:
    from .runconfig import load_config

    cfg = load_config(config_path)
    torch.set_num_threads(1)  # many node processes share the host's cores
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [node {node_id}] %(message)s")
    node = Node(cfg, node_id, rejoin)
    try:
        asyncio.run(node.run())
    except QuorumLost as e:
        log.error("stopping: %s", e)
        if cfg.save_checkpoint:  # the state after the last step this node took
            save_checkpoint(node, node.steps)
        return QUORUM_EXIT
    except (NodeFailure, SkipPipeError) as e:
        log.error("%s", e)
        node.events.write("error", message=str(e))
        return 1
    return 0
