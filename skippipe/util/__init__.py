"""Plumbing shared by the commands, the runtime and measurement: processes, ports, tables."""
