"""Plumbing every command shares, one copy each: run directories (`rundir`), ports (`ports`),
peer tables (`peers`), child processes (`procs`), text tables (`tables`), torch devices
(`devices`)."""
