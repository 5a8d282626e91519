"""User-facing errors: commands print them as one line and exit with code 2."""


class SkipPipeError(Exception):
    """Bad input (settings, schedule, infeasible constraints, a dead peer, a busy port)."""

    exit_code = 2


class ScheduleError(SkipPipeError):
    """A malformed or inconsistent schedule; the message names variant, microbatch, hop, rule."""
