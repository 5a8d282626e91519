"""What peers tell a node between two looks of its iteration loop (node.py reads it): who greeted
at start-up, which data nodes reported DONE for an iteration, and the restart and reroute notices
of an iteration not yet used. Control messages that another part owns go on to it: the launcher's
views (gather.py), rebalancing (moves.py), rejoining (rejoin.py); a Dead accusation goes to
liveness.py, which believes it only if the accused stays silent here too.

Kept apart from node.py because it is the node's intake, not its lifecycle or its loop: it only
records, and the loop decides when to act on what it recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..net.wire import Kind, Message
from .control import Control, Dead, Hello, Reroute, Restart

if TYPE_CHECKING:
    from .gather import Gather
    from .liveness import Liveness
    from .messenger import Messenger
    from .moves import Moves
    from .rejoin import Rejoin


class Notices:
    """One node's record of what its peers told it; takes the messenger's control messages and
    DONE reports from construction on."""

    def __init__(self, messenger: Messenger, live: Liveness, gather: Gather, moves: Moves, rejoin: Rejoin):
        self.live, self.gather, self.moves, self.rejoin = live, gather, moves, rejoin
        self.greeted: set[int] = set()  # peers whose start-up greeting arrived
        self.done_from: dict[int, set[int]] = {}  # iteration -> data nodes that reported DONE
        self.restarts: dict[int, list[Restart | Reroute]] = {}  # iteration -> notices not yet used
        messenger.on_control = self.control
        messenger.handlers[Kind.DONE] = self.done

    def control(self, ctrl: Control, sender: int) -> None:
        if isinstance(ctrl, Hello):
            self.greeted.add(sender)
        elif isinstance(ctrl, Dead):
            self.live.accuse(set(ctrl.dead), sender)  # believed only if they stay silent here
        elif isinstance(ctrl, (Restart, Reroute)):
            self.restarts.setdefault(ctrl.iteration, []).append(ctrl)
        elif not (self.gather.on_control(ctrl, sender) or self.moves.on_control(ctrl, sender)):
            self.rejoin.on_control(ctrl, sender)

    def done(self, msg: Message) -> None:
        self.done_from.setdefault(msg.iteration, set()).add(msg.sender)
