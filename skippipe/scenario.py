"""Scenario: a settings TOML file parsed into frozen, validated dataclasses.

A scenario holds everything the planner, the simulator and the runtime need to know about one
experiment: the model, the pipeline shape, training knobs, the network (locations, links) and the
nodes. Every number lives here, never in code. Errors name the file and the key, and are raised as
`ScenarioError` so commands can print one line and exit 2.
"""
from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SkipPipeError
from .ops import LOSS_AT

GIB = 1024**3
# More nodes than any planner or run of this package can handle in a day: a larger count is a
# typo (10**7 would sit for minutes building node tables before any other check).
MAX_NODES = 10_000


class ScenarioError(SkipPipeError):
    """A settings file that cannot be used; the message names the file and the key."""


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
class Link:
    latency_s: float
    bandwidth_bytes_per_s: float


@dataclass(frozen=True)
class Node:
    id: int
    location: str
    compute_s_per_sample_per_layer: float  # forward seconds per sample per layer
    memory_slots: int


@dataclass(frozen=True)
class Network:
    table: str  # name of the link table
    locations: tuple[str, ...]
    same_location: Link
    links: tuple[tuple[str, str, Link], ...]  # one entry per unordered pair of locations

    def link(self, a: str, b: str) -> Link:
        if a == b:
            return self.same_location
        return self._index()[(a, b) if a < b else (b, a)]

    def _index(self) -> dict[tuple[str, str], Link]:
        cached = self.__dict__.get("_cache")
        if cached is None:
            cached = {(min(a, b), max(a, b)): l for a, b, l in self.links}
            object.__setattr__(self, "_cache", cached)
        return cached


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

_MODEL = {"d_model": int, "n_heads": int, "n_layers": int, "ffn_hidden": int, "ctx_tokens": int,
          "vocab_size": int, "activation_dtype_bytes": int, "param_dtype_bytes": int}
_PIPELINE = {"stage_sizes": list, "path_length": int, "memory_slots": int,
             "microbatches_per_node": int, "samples_per_microbatch": int, "max_swaps": int,
             "max_swap_back_stages": int, "max_swap_distance": int,
             "max_forward_jump_stages": int, "family_memory": bool, "loss_at": str}
_COSTS = {"backward_factor": float, "loss_factor": float, "per_hop_overhead_s": float,
          "weight_grad_share": float}
_TRAINING = {"iterations": int, "learning_rate": float, "grad_clip": float,
             "weight_decay": float, "seed": int, "time_scale": float}
_NODE_GEN = {"count": int, "locations": list, "compute_factors": list, "memory_slots": list}
_NODE = {"location": str, "compute_factor": float, "memory_slots": int}
_OPTIONAL_SECTIONS = {"faults", "runtime", "evaluation"}  # read by later modules
_SECTIONS = {"name", "description", "model", "pipeline", "costs", "training", "network",
             "nodes", "node_generator"} | _OPTIONAL_SECTIONS
_ZERO_OK = {"per_hop_overhead_s", "weight_decay", "seed", "max_swaps", "max_swap_back_stages",
            "max_swap_distance", "grad_clip"}
_DEFAULTS = {"max_swaps": 2, "max_swap_back_stages": 1, "max_swap_distance": 2,
             "max_forward_jump_stages": 4, "activation_dtype_bytes": 4, "param_dtype_bytes": 4,
             "backward_factor": 1.5, "loss_factor": 0.25, "weight_decay": 0.0, "seed": 0,
             "time_scale": 1.0, "iterations": 10, "grad_clip": 1.0, "learning_rate": 6e-4,
             "weight_grad_share": CostConfig.weight_grad_share, "family_memory": False,
             "loss_at": None}


def _fail(path: Path | str, key: str, why: str) -> ScenarioError:
    return ScenarioError(f"{path}: {key}: {why}")


def _section(path, data: dict, name: str, schema: dict, optional_keys=()) -> dict:
    """Check one table against its schema: no unknown keys, right types, positive numbers."""
    if not isinstance(data, dict):
        raise _fail(path, name, "must be a table")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise _fail(path, f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, typ in schema.items():
        full = f"{name}.{key}"
        if key not in data:
            if key in _DEFAULTS:
                out[key] = _DEFAULTS[key]
                continue
            if key in optional_keys:
                continue
            raise _fail(path, full, "missing")
        out[key] = _check_value(path, full, data[key], typ, key in _ZERO_OK)
    return out


def _check_value(path, full: str, value: Any, typ: type, zero_ok: bool):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
        raise _fail(path, full, f"must be {typ.__name__}, got {value!r}")
    if typ in (int, float):
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise _fail(path, full, f"must be {'non-negative' if zero_ok else 'positive'}, got {value}")
    return value


def _check_size(path, key: str, n_nodes: int) -> None:
    if n_nodes > MAX_NODES:
        raise _fail(path, key, f"{n_nodes} nodes, more than the {MAX_NODES} this package plans and runs")


def _positive_list(path, full: str, values: list, typ: type) -> tuple:
    if not values:
        raise _fail(path, full, "must not be empty")
    return tuple(_check_value(path, f"{full}[{i}]", v, typ, False) for i, v in enumerate(values))


def _load_network(path: Path, data: dict) -> tuple[Network, dict[str, float]]:
    """[network] names a link table file (relative to the settings file) or holds one inline."""
    if not isinstance(data, dict):
        raise _fail(path, "network", "must be a table")
    overrides = data.get("link_overrides", [])
    unknown = sorted(set(data) - {"table", "link_overrides"})
    if "table" in data:
        if unknown:
            raise _fail(path, f"network.{unknown[0]}", "unknown key (known: table, link_overrides)")
        table_path = (path.parent / data["table"]).resolve()
        if not table_path.is_file():
            raise _fail(path, "network.table", f"no such file {table_path}")
        table = _read_toml(table_path)
        where = table_path
    else:
        table, where = {k: v for k, v in data.items() if k != "link_overrides"}, path
    return _parse_table(where, table, overrides, path)


def _parse_table(path, t: dict, overrides: list, scenario_path) -> tuple[Network, dict]:
    schema = {"name", "bandwidth_scale", "locations", "compute_s_per_sample_per_layer",
              "same_location_link", "links"}
    unknown = sorted(set(t) - schema)
    if unknown:
        raise _fail(path, unknown[0], f"unknown key (known: {', '.join(sorted(schema))})")
    for key in ("locations", "compute_s_per_sample_per_layer", "same_location_link", "links"):
        if key not in t:
            raise _fail(path, key, "missing")
    scale = _check_value(path, "bandwidth_scale", t.get("bandwidth_scale", 1.0), float, False)
    locations = tuple(t["locations"])
    if len(set(locations)) != len(locations):
        raise _fail(path, "locations", "duplicate location")
    compute = {}
    for loc in locations:
        if loc not in t["compute_s_per_sample_per_layer"]:
            raise _fail(path, f"compute_s_per_sample_per_layer.{loc}", "missing")
        compute[loc] = _check_value(path, f"compute_s_per_sample_per_layer.{loc}",
                                    t["compute_s_per_sample_per_layer"][loc], float, False)
    same = _link(path, "same_location_link", t["same_location_link"], scale)
    links = {}
    for i, entry in enumerate(list(t["links"]) + list(overrides)):
        where = f"links[{i}]" if i < len(t["links"]) else f"network.link_overrides[{i - len(t['links'])}]"
        src = path if i < len(t["links"]) else scenario_path
        if not isinstance(entry, dict):
            raise _fail(src, where, "must be a table with a, b, latency_ms, bandwidth_gib_s")
        a, b = entry.get("a"), entry.get("b")
        for end in (a, b):
            if end not in locations:
                raise _fail(src, f"{where}.a/b", f"unknown location {end!r}")
        rest = {k: v for k, v in entry.items() if k not in ("a", "b")}
        link, pair = _link(src, where, rest, scale), (min(a, b), max(a, b))
        if i < len(t["links"]) and pair in links and links[pair] != link:  # overrides may replace
            raise _fail(src, where, f"location pair {a}-{b} is given twice with different values")
        links[pair] = link
    for i, a in enumerate(locations):
        for b in locations[i + 1:]:
            if (min(a, b), max(a, b)) not in links:
                raise _fail(path, "links", f"missing location pair {a}-{b}")
    net = Network(str(t.get("name", Path(path).stem)), locations, same,
                  tuple((a, b, l) for (a, b), l in sorted(links.items())))
    return net, compute


def _link(path, where: str, entry: dict, scale: float) -> Link:
    s = _section(path, entry, where, {"latency_ms": float, "bandwidth_gib_s": float})
    return Link(s["latency_ms"] / 1000.0, s["bandwidth_gib_s"] * scale * GIB)


def _nodes(path, raw: dict, compute: dict[str, float], net: Network, slots: int) -> tuple[Node, ...]:
    """Nodes from an explicit [[nodes]] list or a [node_generator] (round-robin locations)."""
    if ("nodes" in raw) == ("node_generator" in raw):
        raise _fail(path, "nodes", "give exactly one of [[nodes]] or [node_generator]")
    if "node_generator" in raw:
        g = _section(path, raw["node_generator"], "node_generator", _NODE_GEN,
                     optional_keys=("locations", "compute_factors", "memory_slots"))
        _check_size(path, "node_generator.count", g["count"])
        locs = g.get("locations") or list(net.locations)
        factors = _positive_list(path, "node_generator.compute_factors",
                                 g.get("compute_factors", [1.0]), float)
        mems = _positive_list(path, "node_generator.memory_slots", g.get("memory_slots", [slots]), int)
        specs = [{"location": locs[i % len(locs)], "compute_factor": factors[i % len(factors)],
                  "memory_slots": mems[i % len(mems)]} for i in range(g["count"])]
        key = "node_generator.locations"
    else:
        if not isinstance(raw["nodes"], list):
            raise _fail(path, "nodes", "must be an array of tables [[nodes]]")
        _check_size(path, "nodes", len(raw["nodes"]))
        specs = [_section(path, n, f"nodes[{i}]", _NODE, optional_keys=("compute_factor", "memory_slots"))
                 for i, n in enumerate(raw["nodes"])]
        key = "nodes.location"
    nodes = []
    for i, s in enumerate(specs):
        if s["location"] not in compute:
            raise _fail(path, key, f"unknown location {s['location']!r}")
        nodes.append(Node(i, s["location"], compute[s["location"]] * s.get("compute_factor", 1.0),
                          s.get("memory_slots", slots)))
    return tuple(nodes)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _apply_overrides(path, raw: dict, overrides: dict) -> None:
    """Set "section.key" values (e.g. from the command line) before validation."""
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not key or not isinstance(raw.get(section, {}), dict):
            raise _fail(path, dotted, "override must name section.key")
        raw.setdefault(section, {})[key] = value


def load_scenario(path: str | Path, overrides: dict | None = None) -> Scenario:
    """Parse and validate a settings file, with optional "section.key" overrides.
    Raises ScenarioError naming the file and key."""
    path = Path(path)
    raw = _read_toml(path)
    overrides = dict(overrides or {})
    _apply_overrides(path, raw, overrides)
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise _fail(path, unknown[0], f"unknown section (known: {', '.join(sorted(_SECTIONS))})")
    for sec in ("model", "pipeline", "network"):
        if sec not in raw:
            raise _fail(path, sec, "missing section")
    model = ModelConfig(**_section(path, raw["model"], "model", _MODEL))
    p = _section(path, raw["pipeline"], "pipeline", _PIPELINE)
    p["stage_sizes"] = _positive_list(path, "pipeline.stage_sizes", p["stage_sizes"], int)
    if p["loss_at"] not in (None, *LOSS_AT):
        raise _fail(path, "pipeline.loss_at", f"must be one of {', '.join(LOSS_AT)}, got {p['loss_at']!r}")
    _check_size(path, "pipeline.stage_sizes", sum(p["stage_sizes"]))
    pipeline = PipelineConfig(**p)
    costs = CostConfig(**_section(path, raw.get("costs", {}), "costs", _COSTS))
    if costs.weight_grad_share >= 1:
        raise _fail(path, "costs.weight_grad_share", f"must be below 1 (B keeps the rest of the "
                    f"backward), got {costs.weight_grad_share}")
    training = TrainingConfig(**_section(path, raw.get("training", {}), "training", _TRAINING))
    network, compute = _load_network(path, raw["network"])
    nodes = _nodes(path, raw, compute, network, pipeline.memory_slots)
    _check_consistency(path, model, pipeline, nodes)
    extra = {k: raw[k] for k in _OPTIONAL_SECTIONS if k in raw}
    name = raw.get("name", path.stem)
    return Scenario(name, str(path), _plan_hash(model, pipeline, costs, network, nodes), model,
                    pipeline, costs, training, network, nodes, extra, overrides)


def _plan_hash(model: ModelConfig, pipeline: PipelineConfig, costs: CostConfig, network: Network,
               nodes: tuple[Node, ...]) -> str:
    """sha256 (16 hex digits) of what the planners read. [training] and the optional sections
    stay out: changing iterations, the learning rate or the time scale keeps a schedule valid."""
    pipe = {k: v for k, v in asdict(pipeline).items() if k not in ("family_memory", "loss_at")}
    # each variant records the memory rule (which the validator holds it to) and the loss
    # placement it was made for
    content = {"model": asdict(model), "pipeline": pipe, "costs": _hashed_costs(costs),
               "network": asdict(network), "nodes": [asdict(n) for n in nodes]}
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
        raise _fail(path, "pipeline.stage_sizes", "needs at least 2 stages")
    if model.n_layers % s:
        raise _fail(path, "model.n_layers", f"{model.n_layers} layers do not split into {s} stages")
    if model.d_model % model.n_heads:
        raise _fail(path, "model.n_heads", f"d_model {model.d_model} is not a multiple of n_heads")
    if (model.d_model // model.n_heads) % 2:
        raise _fail(path, "model.n_heads", "head width must be even (rotary embeddings)")
    if sum(p.stage_sizes) != len(nodes):
        raise _fail(path, "pipeline.stage_sizes",
                    f"sum {sum(p.stage_sizes)} differs from the number of nodes {len(nodes)}")
    if not 2 <= p.path_length <= s:
        raise _fail(path, "pipeline.path_length", f"must be between 2 and the {s} stages, got {p.path_length}")
