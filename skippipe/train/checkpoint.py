"""Checkpoints: one state dict per stage (`stage-<s>.pt`, tensors only) plus a JSON description
(`checkpoint.json`) of the model, the run and the data it was trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import SkipPipeError
from ..scenario import ModelConfig
from .model import Stage, build_stage, load_stage_state

CHECKPOINT_META = "checkpoint.json"
STAGE_FILE = "stage-{stage}.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    model: ModelConfig
    n_stages: int
    iteration: int  # optimizer steps taken
    tokens_seen: int  # training tokens consumed
    variant: str
    scenario_name: str
    scenario_hash: str
    data_source: str  # "builtin", a path or "hf:NAME"
    tokenizer_path: str  # SentencePiece model used for the data
    seed: int
    loss_at: str = "origin"  # the stage holding the head (head_stage); older checkpoints: origin


def save_stage(stage: Stage, directory: str | Path) -> Path:
    """torch.save the stage's state dict (CPU tensors) as `directory/stage-<s>.pt`."""
    path = Path(directory) / STAGE_FILE.format(stage=stage.stage)
    state = {k: v.detach().cpu() for k, v in stage.state_dict().items()}
    torch.save(state, path)
    return path


def load_stage_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A stage state dict saved by `save_stage` (tensors only: weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SkipPipeError(f"{path}: no such stage checkpoint") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one clear line
        raise SkipPipeError(f"{path}: not a stage checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SkipPipeError(f"{path}: not a stage state dict")
    return state


def save_checkpoint(stages: Sequence[Stage], directory: str | Path, info: CheckpointInfo) -> Path:
    """Write every stage file and `checkpoint.json` into `directory`; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        save_stage(stage, directory)
    payload = {**asdict(info), "model": asdict(info.model)}
    (directory / CHECKPOINT_META).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo:
    """Parse `checkpoint.json` of a checkpoint directory."""
    path = Path(directory) / CHECKPOINT_META
    try:
        raw = json.loads(path.read_text())
        return CheckpointInfo(**{**raw, "model": ModelConfig(**raw["model"])})
    except OSError:
        raise SkipPipeError(f"{directory}: not a checkpoint directory (no {CHECKPOINT_META})") from None
    except (ValueError, TypeError, KeyError) as e:
        raise SkipPipeError(f"{path}: malformed checkpoint description ({e})") from None


def load_checkpoint(
    directory: str | Path, device: torch.device | str | None = None
) -> tuple[CheckpointInfo, list[Stage]]:
    """Rebuild every stage of a checkpoint directory on `device` (default `pick_device()`)."""
    info = read_checkpoint_info(directory)
    stages = []
    for s in range(info.n_stages):
        module = build_stage(info.model, s, info.n_stages, device, info.seed, info.loss_at)
        with torch.no_grad():
            load_stage_state(module, load_stage_file(Path(directory) / STAGE_FILE.format(stage=s)))
        stages.append(module)
    return info, stages
