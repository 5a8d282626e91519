"""Measure a live cluster and describe it as a scenario file.

Every node runs one measurement process (`python -m skippipe measure`); node 0 coordinates. Over
our `Transport` it has each node probe its links and time one pipeline stage of the scenario's
model, then renders a scenario: one location per node (`node-<i>`), links with latency = RTT/2
and the measured bandwidth, the measured compute speed per location, [model]/[pipeline]/[costs]/
[training] from a template scenario, and a header comment with the raw figures.

Modules, one concept each:
- figures: Settings, ComputeTask, NodeFigures, LinkFigures, Measurements; median, bandwidth
- compute: timing one stage on this process's device (memory, saved activations, host facts)
- protocol: MeasureNode, the messages between live nodes, measure()
- scenario_out: measurements -> scenario text (fit_pipeline, render_scenario, write_scenario)
- toml_writer: dump_toml
- peers, plan, command, local: the `measure` command (peer table, node 0's inputs, one node,
  `--local N` processes)

The public names below are importable from `skippipe.measure` itself. Each loads its module on
first use, so that the command's parser, which needs only `peers`, does not import the
transport (DecCom, numpy) just to print --help.
"""
from __future__ import annotations

import importlib

_HOME = {  # public name -> module that defines it
    **dict.fromkeys(["MIB", "GIB", "TRANSFER_FLOOR_FRACTION", "SIGNIFICANT_DIGITS", "MeasureError",
                     "Settings", "ComputeTask", "NodeFigures", "LinkFigures", "Measurements",
                     "median", "bandwidth", "significant"], "figures"),
    **dict.fromkeys(["measure_compute"], "compute"),
    **dict.fromkeys(["COORDINATOR", "BULK_TAG", "MeasureNode", "measure"], "protocol"),
    **dict.fromkeys(["proportional", "fit_pipeline", "location", "render_scenario",
                     "summary_lines", "memory_warnings", "write_scenario"], "scenario_out"),
    **dict.fromkeys(["dump_toml", "toml_key", "toml_string", "toml_value"], "toml_writer"),
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
