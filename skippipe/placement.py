"""Where the stages live: one stage per node, or DualPipeV's V placement (two per node).

An allocation lists, per stage, the nodes that hold it. Ordinarily every node holds one stage.
Under the *V placement* (DualPipeV, Qi et al.'s "cut in half" DualPipe; variants whose registry
entry is `v_placed`) the model's S stages (S even, the layers unchanged) fold into P = S/2
groups: group g holds stage g and its mirror S-1-g, so allocation[g] == allocation[S-1-g], and
every node holds two stage chunks. A full path goes down its column through the first half of
the model and back up through the second: nodes n0, n1, ..., n(P-1), n(P-1), ..., n1, n0. The
origin (group 0) holds stage 0 and the last stage, so the loss stays where the labels and the LM
head are.

A node's memory and parameters count both chunks: each chunk's forward takes an activation slot,
and a group averages both stages' gradients over the same ring, one after the other.

On a path a node's k-th visit is its k-th stage (`hop_stages`): true of the V (down, then up)
and of every one-stage node, so messages need not name stages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Allocation = Sequence[Sequence[int]]


def stages_of(allocation: Allocation) -> dict[int, tuple[int, ...]]:
    """node -> the stages it holds, ascending."""
    out: dict[int, list[int]] = {}
    for stage, nodes in enumerate(allocation):
        for n in nodes:
            out.setdefault(n, []).append(stage)
    return {n: tuple(stages) for n, stages in out.items()}


def hop_stages(nodes: Iterable[int], held: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    """The stage of each hop of a path through `nodes`: a node's k-th visit is its k-th stage."""
    seen: dict[int, int] = {}
    out = []
    for n in nodes:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(held[n][min(k, len(held[n]) - 1)])
    return tuple(out)


def fold(allocation: Allocation) -> tuple[tuple[int, ...], ...]:
    """A V allocation from a one-stage-per-node one (DT-FM's): group 0 keeps stage 0's nodes (the
    data nodes: the same microbatches with the same origins); the other nodes, in the
    allocation's stage order (neighbouring stages are near each other), are dealt in contiguous
    runs of near-equal size over groups 1..P-1. Raises ValueError where no V fits."""
    n_stages = len(allocation)
    if n_stages < 4 or n_stages % 2:
        raise ValueError(f"the V placement needs an even number of stages, at least 4; got {n_stages}")
    groups_left = n_stages // 2 - 1
    rest = [n for nodes in allocation[1:] for n in nodes]
    if len(rest) < groups_left:
        raise ValueError(
            f"the V placement needs {groups_left} nodes besides the data nodes; there are {len(rest)}"
        )
    size, extra = divmod(len(rest), groups_left)
    groups, at = [tuple(allocation[0])], 0
    for g in range(groups_left):
        take = size + (1 if g < extra else 0)
        groups.append(tuple(rest[at : at + take]))
        at += take
    return tuple(groups) + tuple(reversed(groups))


def v_problems(allocation: Allocation, stage_sizes: Sequence[int], n_nodes: int) -> list[str]:
    """The V rule: an even number of stages, stage s and S-1-s held by the same nodes, every node
    in exactly one group, and as many data nodes as the scenario's stage 0."""
    n_stages = len(allocation)
    if n_stages != len(stage_sizes) or n_stages % 2:
        return [
            f"a V placement folds the scenario's {len(stage_sizes)} stages in half; "
            f"the allocation has {n_stages}"
        ]
    out = [
        f"stages {s} and {n_stages - 1 - s} must be held by the same nodes"
        for s in range(n_stages // 2)
        if tuple(allocation[s]) != tuple(allocation[n_stages - 1 - s])
    ]
    groups = [n for nodes in allocation[: n_stages // 2] for n in nodes]
    if sorted(groups) != list(range(n_nodes)):
        out.append("a V placement must put every node in exactly one stage pair")
    if len(allocation[0]) != stage_sizes[0]:
        out.append(f"{len(allocation[0])} data nodes, not the scenario's {stage_sizes[0]}")
    return out


def v_path_problem(nodes: Sequence[int]) -> str | None:
    """A full path under the V placement comes back through the nodes it went down through."""
    if tuple(nodes) != tuple(reversed(nodes)):
        return f"a V path returns through the nodes it went down through, got {list(nodes)}"
    return None


def averaging_ends(
    done: Sequence[float], averaging: Sequence[float], allocation: Allocation
) -> tuple[float, ...]:
    """When each stage's averaging ends: it starts once its nodes are done; stages held by the
    same nodes (a V group) average one after the other over the same ring, lower stage first."""
    ends = [0.0] * len(allocation)
    groups: dict[tuple[int, ...], list[int]] = {}
    for stage, nodes in enumerate(allocation):
        groups.setdefault(tuple(sorted(nodes)), []).append(stage)
    for stages in groups.values():
        t = max(done[s] for s in stages)
        for s in stages:
            t += averaging[s]
            ends[s] = t
    return tuple(ends)
