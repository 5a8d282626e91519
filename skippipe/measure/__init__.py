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

Import names from the module that defines them: the package itself loads nothing, so the
command's parser, which needs only `peers`, does not import the transport (DecCom, numpy) just
to print --help.
"""
