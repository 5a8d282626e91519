"""The network of a scenario: locations, the links between them, and the nodes at them; and how a
settings file describes them ([network]: a link table, inline or in its own file, with link
overrides; [[nodes]] or a [node_generator])."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .settings_checks import check_value, fail, positive_list, read_toml, section

GIB = 1024**3
# More nodes than any planner or run of this package can handle in a day: a larger count is a
# typo (10**7 would sit for minutes building node tables before any other check).
MAX_NODES = 10_000
_NODE_GEN = {"count": int, "locations": list, "compute_factors": list, "memory_slots": list}
_NODE = {"location": str, "compute_factor": float, "memory_slots": int}


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
            cached = {(min(a, b), max(a, b)): link for a, b, link in self.links}
            object.__setattr__(self, "_cache", cached)
        return cached


def check_size(path, key: str, n_nodes: int) -> None:
    if n_nodes > MAX_NODES:
        raise fail(path, key, f"{n_nodes} nodes, more than the {MAX_NODES} this package plans and runs")


def load_network(path: Path, data: dict) -> tuple[Network, dict[str, float]]:
    """[network] names a link table file (relative to the settings file) or holds one inline."""
    if not isinstance(data, dict):
        raise fail(path, "network", "must be a table")
    overrides = data.get("link_overrides", [])
    unknown = sorted(set(data) - {"table", "link_overrides"})
    if "table" in data:
        if unknown:
            raise fail(path, f"network.{unknown[0]}", "unknown key (known: table, link_overrides)")
        table_path = (path.parent / data["table"]).resolve()
        if not table_path.is_file():
            raise fail(path, "network.table", f"no such file {table_path}")
        table = read_toml(table_path)
        where = table_path
    else:
        table, where = {k: v for k, v in data.items() if k != "link_overrides"}, path
    return _parse_table(where, table, overrides, path)


def _parse_table(path, t: dict, overrides: list, scenario_path) -> tuple[Network, dict]:
    schema = {
        "name",
        "bandwidth_scale",
        "locations",
        "compute_s_per_sample_per_layer",
        "same_location_link",
        "links",
    }
    unknown = sorted(set(t) - schema)
    if unknown:
        raise fail(path, unknown[0], f"unknown key (known: {', '.join(sorted(schema))})")
    for key in ("locations", "compute_s_per_sample_per_layer", "same_location_link", "links"):
        if key not in t:
            raise fail(path, key, "missing")
    scale = check_value(path, "bandwidth_scale", t.get("bandwidth_scale", 1.0), float, False)
    locations = tuple(t["locations"])
    if len(set(locations)) != len(locations):
        raise fail(path, "locations", "duplicate location")
    compute = {}
    for loc in locations:
        if loc not in t["compute_s_per_sample_per_layer"]:
            raise fail(path, f"compute_s_per_sample_per_layer.{loc}", "missing")
        compute[loc] = check_value(
            path,
            f"compute_s_per_sample_per_layer.{loc}",
            t["compute_s_per_sample_per_layer"][loc],
            float,
            False,
        )
    same = _link(path, "same_location_link", t["same_location_link"], scale)
    links = {}
    for i, entry in enumerate(list(t["links"]) + list(overrides)):
        where = f"links[{i}]" if i < len(t["links"]) else f"network.link_overrides[{i - len(t['links'])}]"
        src = path if i < len(t["links"]) else scenario_path
        if not isinstance(entry, dict):
            raise fail(src, where, "must be a table with a, b, latency_ms, bandwidth_gib_s")
        a, b = entry.get("a"), entry.get("b")
        for end in (a, b):
            if end not in locations:
                raise fail(src, f"{where}.a/b", f"unknown location {end!r}")
        rest = {k: v for k, v in entry.items() if k not in ("a", "b")}
        link, pair = _link(src, where, rest, scale), (min(a, b), max(a, b))
        if i < len(t["links"]) and pair in links and links[pair] != link:  # overrides may replace
            raise fail(src, where, f"location pair {a}-{b} is given twice with different values")
        links[pair] = link
    for i, a in enumerate(locations):
        for b in locations[i + 1 :]:
            if (min(a, b), max(a, b)) not in links:
                raise fail(path, "links", f"missing location pair {a}-{b}")
    net = Network(
        str(t.get("name", Path(path).stem)),
        locations,
        same,
        tuple((a, b, link) for (a, b), link in sorted(links.items())),
    )
    return net, compute


def _link(path, where: str, entry: dict, scale: float) -> Link:
    s = section(path, entry, where, {"latency_ms": float, "bandwidth_gib_s": float})
    return Link(s["latency_ms"] / 1000.0, s["bandwidth_gib_s"] * scale * GIB)


def load_nodes(path, raw: dict, compute: dict[str, float], net: Network, slots: int) -> tuple[Node, ...]:
    """Nodes from an explicit [[nodes]] list or a [node_generator] (round-robin locations)."""
    if ("nodes" in raw) == ("node_generator" in raw):
        raise fail(path, "nodes", "give exactly one of [[nodes]] or [node_generator]")
    if "node_generator" in raw:
        g = section(
            path,
            raw["node_generator"],
            "node_generator",
            _NODE_GEN,
            optional_keys=("locations", "compute_factors", "memory_slots"),
        )
        check_size(path, "node_generator.count", g["count"])
        locs = g.get("locations") or list(net.locations)
        factors = positive_list(
            path, "node_generator.compute_factors", g.get("compute_factors", [1.0]), float
        )
        mems = positive_list(path, "node_generator.memory_slots", g.get("memory_slots", [slots]), int)
        specs = [
            {
                "location": locs[i % len(locs)],
                "compute_factor": factors[i % len(factors)],
                "memory_slots": mems[i % len(mems)],
            }
            for i in range(g["count"])
        ]
        key = "node_generator.locations"
    else:
        if not isinstance(raw["nodes"], list):
            raise fail(path, "nodes", "must be an array of tables [[nodes]]")
        check_size(path, "nodes", len(raw["nodes"]))
        specs = [
            section(path, n, f"nodes[{i}]", _NODE, optional_keys=("compute_factor", "memory_slots"))
            for i, n in enumerate(raw["nodes"])
        ]
        key = "nodes.location"
    nodes = []
    for i, s in enumerate(specs):
        if s["location"] not in compute:
            raise fail(path, key, f"unknown location {s['location']!r}")
        nodes.append(
            Node(
                i,
                s["location"],
                compute[s["location"]] * s.get("compute_factor", 1.0),
                s.get("memory_slots", slots),
            )
        )
    return tuple(nodes)
