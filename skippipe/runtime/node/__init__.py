"""One node process of a run: its configuration, compute, messages, iteration loop, liveness,
quorum, averaging, online routing, rebalancing moves, rejoin, checkpoints and injected faults."""
