"""The distributed runtime: node processes, their transport and wire format, link and compute
emulation, gradient averaging, failure detection and recovery, and the launcher."""
