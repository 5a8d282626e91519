"""The event simulator: the judge of every variant's iteration time."""
