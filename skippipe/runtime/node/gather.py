"""The whole run's results where its first launcher can read them.

Each host's launcher reads only the event files of its own nodes. So after every iteration a
data node reports its losses (Report) to node 0 and to the other live data nodes, and at the
end every node tells every live peer the iterations it ran and its membership view (Finished).
Receivers write what they hear as events (`report`, `peer_finished`): the launcher on node 0's
host, or node 0 itself under torchrun, then prints the loss of every data node of the run per
iteration and compares every node's view (launch/supervisor.py).
"""

from __future__ import annotations

from .control import Control, Finished, Report
from .messenger import Messenger

RECORDER = 0  # node 0 is on the first host by definition (it publishes the schedule there)


class Gather:
    def __init__(self, node_id: int, data_nodes: tuple[int, ...], messenger: Messenger):
        self.id, self.data_nodes, self.m = node_id, set(data_nodes), messenger

    def after_iteration(self, it: int, loss_sum: float, loss_count: int) -> None:
        """A data node reports iteration `it`'s losses to the nodes that record them."""
        if self.id not in self.data_nodes:
            return
        for n in sorted(({RECORDER} | self.data_nodes) - {self.id} - self.m.live.dead):
            self.m.tell(n, Report(it, float(loss_sum), loss_count))

    def finished(self, iterations: int) -> None:
        """This node ran its iterations: its view, to every live peer (and to its own events)."""
        dead = tuple(sorted(self.m.live.dead))
        self.m.events.write("finished", iterations=iterations, dead=list(dead))
        self.m.tell_live(Finished(iterations, dead))

    def on_control(self, ctrl: Control, sender: int) -> bool:
        """Record a Report or Finished; False for any other message."""
        if isinstance(ctrl, Report):
            if sender in self.data_nodes:
                self.m.events.write(
                    "report",
                    sender=sender,
                    iteration=ctrl.report,
                    loss_sum=ctrl.loss_sum,
                    loss_count=ctrl.loss_count,
                )
        elif isinstance(ctrl, Finished):
            self.m.live.finished.add(sender)  # silence is fine from now on
            self.m.events.write(
                "peer_finished", sender=sender, iterations=ctrl.finished, dead=list(ctrl.dead)
            )
        else:
            return False
        return True
