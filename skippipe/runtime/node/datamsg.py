"""Data messages: the activations (FORWARD) and gradients (BACKWARD) of one microbatch.

Besides the tensor, each one carries in its wire tags the hop it is for, the attempt of its
microbatch (a data node restarts a microbatch on a repaired path with attempt + 1) and the
microbatch's whole path, so any node can serve a re-routed microbatch it was not planned for.
Under online routing the path is the part routed so far, and the hop tag's bits above HOP_BITS
carry the sender's routing report (routes.py).
"""

from __future__ import annotations

from ...ops import B, F, L, Op, OpKind, next_op, node_of
from ...placement import hop_stages
from ...schedule import Hop, MicrobatchPath
from ..net.wire import Kind, Message

TAG_HOP, TAG_ATTEMPT, TAG_PATH_LO, TAG_PATH_HI = range(4)
HOP_BITS = 8  # the hop index in the hop tag's low bits; the bits above are routing's
NODE_BITS = 15  # a path's node ids are packed 4 to a tag, as id + 1 (0 = no hop)
MAX_PATH_HOPS = 8


def pack_path(nodes: tuple[int, ...]) -> tuple[int, int]:
    if len(nodes) > MAX_PATH_HOPS or max(nodes) >= 2**NODE_BITS - 1:
        raise ValueError(f"path {nodes} too long or node ids too large for the wire tags")
    words = [0, 0]
    for i, n in enumerate(nodes):
        words[i // 4] |= (n + 1) << (NODE_BITS * (i % 4))
    return words[0], words[1]


def unpack_path(lo: int, hi: int) -> tuple[int, ...]:
    nodes = []
    for word in (lo, hi):
        for i in range(4):
            v = (word >> (NODE_BITS * i)) & (2**NODE_BITS - 1)
            if v:
                nodes.append(v - 1)
    return tuple(nodes)


def onward(
    sender: int,
    it: int,
    path: MicrobatchPath,
    op: Op,
    out,
    attempt: int,
    report: int = 0,
    loss_at: str = "origin",
) -> tuple[int, Message] | None:
    """Where the result `out` of `op` goes next and the message that takes it there; None after
    the backward at hop 0 (the microbatch is done). `report`: routing's bits of the hop tag;
    `loss_at`: the variant's (the loss on the last hop is a message to the sender itself)."""
    nxt = next_op(op, len(path.hops))
    if nxt is None:
        return None
    kind = Kind.BACKWARD if nxt.kind is OpKind.B else Kind.FORWARD
    hop = len(path.hops) if nxt.kind is OpKind.L else nxt.hop
    msg = Message.from_tensor(
        kind,
        sender,
        out,
        iteration=it,
        microbatch=op.microbatch,
        tags=(hop | report << HOP_BITS, attempt, *pack_path(path.nodes)),
    )
    return node_of(nxt, path.nodes, loss_at), msg


def attempt_of(msg: Message) -> int:
    return msg.tags[TAG_ATTEMPT]


def path_of(msg: Message, stages_of: dict[int, tuple[int, ...]]) -> MicrobatchPath:
    nodes = unpack_path(msg.tags[TAG_PATH_LO], msg.tags[TAG_PATH_HI])
    return MicrobatchPath(msg.microbatch, nodes[0], tuple(map(Hop, hop_stages(nodes, stages_of), nodes)))


def op_of(msg: Message, path: MicrobatchPath) -> Op:
    """The operation a data message is the input of (a FORWARD past the last hop is the loss)."""
    hop = msg.tags[TAG_HOP] & ((1 << HOP_BITS) - 1)
    if msg.kind == Kind.FORWARD:
        return L(msg.microbatch) if hop == len(path.hops) else F(msg.microbatch, hop)
    return B(msg.microbatch, hop)
