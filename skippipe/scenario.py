"""Scenario: a settings TOML file parsed into frozen, validated dataclasses.

A scenario holds everything the planner, the simulator and the runtime need to know about one
experiment: the model, the pipeline shape, training knobs, the network (locations, links) and the
nodes. Every number lives here, never in code. Errors name the file and the key, and are raised as
`ScenarioError` so commands can print one line and exit 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .network import Link, Network, Node, check_size, load_network, load_nodes
from .ops import LOSS_AT
from .settings_checks import fail, positive_list, read_toml, section


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_heads: int
    n_layers: int
    ffn_hidden: int  # SwiGLU hidden width
    ctx_tokens: int  # sequence length
    vocab_size: int
    activation_dtype_bytes: int  # bytes per activation element on the wire (4 = fp32)
    param_dtype_bytes: int  # bytes per parameter in gradient averaging

    def layer_params(self) -> int:
        """Parameters of one transformer layer (attention, SwiGLU MLP, two RMSNorm gains)."""
        return 4 * self.d_model**2 + 3 * self.d_model * self.ffn_hidden + 2 * self.d_model

    def head_params(self) -> int:
        """Parameters stage 0 holds besides its layers: embedding, final norm, LM head."""
        return 2 * self.vocab_size * self.d_model + self.d_model


@dataclass(frozen=True)
class PipelineConfig:
    stage_sizes: tuple[int, ...]  # nodes per stage; stage 0 holds the data nodes
    path_length: int  # k: stages each microbatch visits, stage 0 included
    memory_slots: int  # m: default activations a node may hold at once
    microbatches_per_node: int  # per data node per iteration
    samples_per_microbatch: int
    max_swaps: int  # CC3: swaps per path
    max_swap_back_stages: int  # CC3: how far below the frontier one swap may go
    max_swap_distance: int  # CC3: total swap distance per path
    max_forward_jump_stages: int  # CC3: largest step up from the previous stage
    # the classic families keep their own published memory rules instead of memory_slots
    family_memory: bool = False
    # where the full pipelines run the LM head and loss (ops.LOSS_AT); None: each variant's default
    loss_at: str | None = None

    @property
    def n_stages(self) -> int:
        return len(self.stage_sizes)


@dataclass(frozen=True)
class CostConfig:
    backward_factor: float  # backward time = factor x forward time
    loss_factor: float  # loss + LM head at the origin = factor x forward time
    per_hop_overhead_s: float  # fixed cost per message (host<->device copies and similar)
    # W's share of the backward when a variant splits it (B keeps the rest). Default 0.5: each
    # linear layer's backward is two matmuls the size of its forward, one for the input
    # gradient and one for the weight gradient; attention's score products have no weights, so
    # a measured share sits a little below 0.5 at long contexts.
    weight_grad_share: float = 0.5


@dataclass(frozen=True)
class TrainingConfig:
    iterations: int
    learning_rate: float
    grad_clip: float
    weight_decay: float
    seed: int
    time_scale: float  # runtime: the default of the run's time scale (emulation.py)


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str  # path of the settings file
    content_hash: str  # sha256 of what planners read (not [training]): schedules record it
    model: ModelConfig
    pipeline: PipelineConfig
    costs: CostConfig
    training: TrainingConfig
    network: Network
    nodes: tuple[Node, ...]
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # optional sections
    overrides: dict = field(default_factory=dict, compare=False, hash=False)  # "section.key" -> value

    @property
    def layers_per_stage(self) -> int:
        return self.model.n_layers // self.pipeline.n_stages

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def link(self, a: int, b: int) -> Link:
        return self.network.link(self.nodes[a].location, self.nodes[b].location)


# ----------------------------------------------------------------------------------------------
# Parsing. Each section has a schema: key -> (type, required default or REQUIRED).

REQUIRED = object()

_MODEL = {
    "d_model": int,
    "n_heads": int,
    "n_layers": int,
    "ffn_hidden": int,
    "ctx_tokens": int,
    "vocab_size": int,
    "activation_dtype_bytes": int,
    "param_dtype_bytes": int,
}
_PIPELINE = {
    "stage_sizes": list,
    "path_length": int,
    "memory_slots": int,
    "microbatches_per_node": int,
    "samples_per_microbatch": int,
    "max_swaps": int,
    "max_swap_back_stages": int,
    "max_swap_distance": int,
    "max_forward_jump_stages": int,
    "family_memory": bool,
    "loss_at": str,
}
_COSTS = {
    "backward_factor": float,
    "loss_factor": float,
    "per_hop_overhead_s": float,
    "weight_grad_share": float,
}
_TRAINING = {
    "iterations": int,
    "learning_rate": float,
    "grad_clip": float,
    "weight_decay": float,
    "seed": int,
    "time_scale": float,
}
_OPTIONAL_SECTIONS = {"faults"}  # read by the runtime (a failure plan)
_SECTIONS = {
    "name",
    "description",
    "model",
    "pipeline",
    "costs",
    "training",
    "network",
    "nodes",
    "node_generator",
} | _OPTIONAL_SECTIONS
_ZERO_OK = {
    "per_hop_overhead_s",
    "weight_decay",
    "seed",
    "max_swaps",
    "max_swap_back_stages",
    "max_swap_distance",
    "grad_clip",
}
_DEFAULTS = {
    "max_swaps": 2,
    "max_swap_back_stages": 1,
    "max_swap_distance": 2,
    "max_forward_jump_stages": 4,
    "activation_dtype_bytes": 4,
    "param_dtype_bytes": 4,
    "backward_factor": 1.5,
    "loss_factor": 0.25,
    "weight_decay": 0.0,
    "seed": 0,
    "time_scale": 1.0,
    "iterations": 10,
    "grad_clip": 1.0,
    "learning_rate": 6e-4,
    "weight_grad_share": CostConfig.weight_grad_share,
    "family_memory": False,
    "loss_at": None,
}


def _section(path, data: dict, name: str, schema: dict) -> dict:
    return section(path, data, name, schema, defaults=_DEFAULTS, zero_ok=_ZERO_OK)


def _apply_overrides(path, raw: dict, overrides: dict) -> None:
    """Set "section.key" values (e.g. from the command line) before validation."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or not isinstance(raw.get(section, {}), dict):
            raise fail(path, dotted, "override must name section.key")
        raw.setdefault(section, {})[key] = value


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    """Parse and validate a settings file, with optional "section.key" overrides.
    Raises ScenarioError naming the file and key."""
    path = Path(path)
    raw = read_toml(path)
    overrides = dict(overrides or {})
    _apply_overrides(path, raw, overrides)
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise fail(path, unknown[0], f"unknown section (known: {', '.join(sorted(_SECTIONS))})")
    for sec in ("model", "pipeline", "network"):
        if sec not in raw:
            raise fail(path, sec, "missing section")
    model = ModelConfig(**_section(path, raw["model"], "model", _MODEL))
    p = _section(path, raw["pipeline"], "pipeline", _PIPELINE)
    p["stage_sizes"] = positive_list(path, "pipeline.stage_sizes", p["stage_sizes"], int)
    if p["loss_at"] not in (None, *LOSS_AT):
        raise fail(path, "pipeline.loss_at", f"must be one of {', '.join(LOSS_AT)}, got {p['loss_at']!r}")
    check_size(path, "pipeline.stage_sizes", sum(p["stage_sizes"]))
    pipeline = PipelineConfig(**p)
    costs = CostConfig(**_section(path, raw.get("costs", {}), "costs", _COSTS))
    if costs.weight_grad_share >= 1:
        raise fail(
            path,
            "costs.weight_grad_share",
            f"must be below 1 (B keeps the rest of the backward), got {costs.weight_grad_share}",
        )
    training = TrainingConfig(**_section(path, raw.get("training", {}), "training", _TRAINING))
    network, compute = load_network(path, raw["network"])
    nodes = load_nodes(path, raw, compute, network, pipeline.memory_slots)
    _check_consistency(path, model, pipeline, nodes)
    extra = {k: raw[k] for k in _OPTIONAL_SECTIONS if k in raw}
    name = raw.get("name", path.stem)
    return Scenario(
        name,
        str(path),
        _plan_hash(model, pipeline, costs, network, nodes),
        model,
        pipeline,
        costs,
        training,
        network,
        nodes,
        extra,
        overrides,
    )


def _plan_hash(
    model: ModelConfig, pipeline: PipelineConfig, costs: CostConfig, network: Network, nodes: tuple[Node, ...]
) -> str:
    """sha256 (16 hex digits) of what the planners read. [training] and the optional sections
    stay out: changing iterations, the learning rate or the time scale keeps a schedule valid."""
    pipe = {k: v for k, v in asdict(pipeline).items() if k not in ("family_memory", "loss_at")}
    # each variant records the memory rule (which the validator holds it to) and the loss
    # placement it was made for
    content = {
        "model": asdict(model),
        "pipeline": pipe,
        "costs": _hashed_costs(costs),
        "network": asdict(network),
        "nodes": [asdict(n) for n in nodes],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _hashed_costs(costs: CostConfig) -> dict:
    """[costs] as it enters the content hash. weight_grad_share came later and only matters to
    split-backward variants: at its default it is left out, so schedules planned before it
    existed still match their settings."""
    out = asdict(costs)
    if costs.weight_grad_share == CostConfig.weight_grad_share:
        del out["weight_grad_share"]
    return out


def _check_consistency(path, model: ModelConfig, p: PipelineConfig, nodes) -> None:
    s = p.n_stages
    if s < 2:
        raise fail(path, "pipeline.stage_sizes", "needs at least 2 stages")
    if model.n_layers % s:
        raise fail(path, "model.n_layers", f"{model.n_layers} layers do not split into {s} stages")
    if model.d_model % model.n_heads:
        raise fail(path, "model.n_heads", f"d_model {model.d_model} is not a multiple of n_heads")
    if (model.d_model // model.n_heads) % 2:
        raise fail(path, "model.n_heads", "head width must be even (rotary embeddings)")
    if sum(p.stage_sizes) != len(nodes):
        raise fail(
            path,
            "pipeline.stage_sizes",
            f"sum {sum(p.stage_sizes)} differs from the number of nodes {len(nodes)}",
        )
    if not 2 <= p.path_length <= s:
        raise fail(path, "pipeline.path_length", f"must be between 2 and the {s} stages, got {p.path_length}")
