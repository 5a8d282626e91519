"""The summary table of a built schedule: one row per variant (the simulator's predicted
iteration time and makespan, ratios to the baseline, the solver's bound, gap and time, peak
memory, status), and a row for each variant that failed, as `python -m skippipe schedule` and
create_schedule.py print it after planning. Apart from planning.py because it reads a finished
Schedule only: the build does not need it, and any schedule, planned now or loaded, can be
summarised.
"""

from __future__ import annotations

from .schedule import Schedule, VariantSchedule
from .variants import REFERENCE


def summary_rows(sched: Schedule, failures: dict[str, str] | None = None) -> list[dict]:
    """One row per variant: predicted iteration time and makespan, ratios to the baseline,
    solver bound (of the variant's objective), gap and time; a row marked FAILED for each of
    `failures` (variant -> why)."""
    base = sched.variants.get(REFERENCE)
    rows = []
    for name, v in sched.variants.items():
        it, mk = v.predicted.get("iteration_s"), v.predicted.get("makespan_s")
        p = v.provenance
        rows.append(
            {
                "variant": name,
                "iteration_s": it,
                "makespan_s": mk,
                "vs_baseline": it / base.predicted["iteration_s"] if base and it else None,
                "makespan_vs_baseline": mk / base.predicted["makespan_s"] if base and mk else None,
                "bound_s": p.bound,
                "gap": p.gap,
                "solve_s": p.wall_s,
                "limit_s": p.time_limit_s,
                "bubble": v.predicted.get("bubble_share"),
                "peak": v.predicted.get("peak_activations"),
                "peak_slots": _peak_slots(v),
                "memory": v.memory,
                "status": p.status,
            }
        )
    return rows + [{"variant": name, "status": f"FAILED: {why}"} for name, why in (failures or {}).items()]


def _peak_slots(v: VariantSchedule) -> str:
    """ "peak/slots" at the variant's fullest node ("-" for a schedule planned before it was kept)."""
    p = v.predicted
    if "fullest_peak" not in p:
        return "-"
    return f"{p['fullest_peak']:.0f}/{p['fullest_slots']:.0f}"


def format_summary(rows: list[dict]) -> str:
    """summary_rows as the fixed-width table create_schedule.py prints."""

    def f(x, spec):
        return format(x, spec) if x is not None else format("-", f">{spec.split('.')[0]}")

    blank = {
        **dict.fromkeys(
            (
                "iteration_s",
                "makespan_s",
                "vs_baseline",
                "makespan_vs_baseline",
                "bound_s",
                "gap",
                "solve_s",
                "limit_s",
                "bubble",
                "peak",
            )
        ),
        "peak_slots": "-",
        "memory": "-",
    }  # a failed variant's row has only its status
    rows = [{**blank, **r} for r in rows]
    lines = [
        f"{'variant':<15} {'iteration s':>11} {'makespan s':>10} {'it/base':>8} {'mk/base':>8} "
        f"{'bound s':>8} {'gap':>6} {'solve s':>8} {'limit s':>8} {'bubble':>6} {'peak act':>8} "
        f"{'peak/slots':>10} {'memory':>6}  status"
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:<15} {f(r['iteration_s'], '11.2f')} {f(r['makespan_s'], '10.2f')} "
            f"{f(r['vs_baseline'], '8.3f')} {f(r['makespan_vs_baseline'], '8.3f')} "
            f"{f(r['bound_s'], '8.2f')} {f(r['gap'], '6.1%')} {f(r['solve_s'], '8.1f')} "
            f"{f(r['limit_s'], '8.1f')} {f(r['bubble'], '6.1%')} {f(r['peak'], '8.0f')} "
            f"{r['peak_slots']:>10} {r['memory']:>6}  {r['status']}"
        )
    return "\n".join(lines)
