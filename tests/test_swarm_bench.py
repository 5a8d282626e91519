"""bench/swarm_bench.py's and bench/swarm_report.py's pure helpers: the fault node by role, the --fail options, what a run's
events count, losses at equal iterations, the table; bad command lines exit 2 in one line.
No node process is started (the bench itself is run by hand)."""

import pytest

from bench import swarm_bench as sb
from bench import swarm_report as sr
from skippipe.failures import Condition, FailureSpec


def test_fault_node_is_the_last_node_of_the_first_non_data_stage_with_a_peer():
    assert sb.fault_node(((2, 5), (3, 4), (1,), (0,))) == 4
    assert sb.fault_node(((0, 1), (2,), (3, 4, 5), (6, 7))) == 5  # stage 1 alone: skipped
    assert sb.fault_node(((0, 1), (2,), (3,))) is None  # only the data stage has peers


def test_fail_args_per_condition():
    assert sb.fail_args("static", 4) == []
    assert sb.fail_args("straggler", 4) == ["--fail", "node=4,iteration=3,phase=start,how=slow,factor=3"]
    assert sb.fail_args("churn", 4) == ["--fail", "node=4,iteration=2,phase=forward,how=crash"]


def _end(node, it, loss_sum=0.0, count=0, degraded=False):
    return {
        "event": "iteration_end",
        "node": node,
        "iteration": it,
        "t": 1.0 + it,
        "wall_s": 0.5,
        "loss_sum": loss_sum,
        "loss_count": count,
        "degraded": degraded,
    }


EVENTS = [
    _end(0, 0, 12.0, 2),
    _end(1, 0, 10.0, 2),
    _end(2, 0),
    {"event": "fault", "node": 2, "iteration": 1, "how": "crash", "t": 2.0},
    {"event": "microbatch_restarted", "node": 0, "iteration": 1, "microbatch": 3, "attempt": 1, "t": 2.1},
    {"event": "microbatch_rerouted", "node": 3, "iteration": 1, "microbatch": 4, "hop": 2, "t": 2.2},
    {"event": "microbatch_lost", "node": 0, "iteration": 1, "microbatch": 5, "t": 2.3},
    _end(0, 1, 9.0, 3, degraded=True),
    _end(1, 1, 6.0, 1, degraded=True),
    {"event": "rejoined", "node": 2, "iteration": 2, "sponsor": 3, "t": 3.0},
    # one move: the decider's rebalance event and the mover's moved event
    {
        "event": "rebalance",
        "node": 0,
        "iteration": 2,
        "moved": 2,
        "source": 1,
        "target": 2,
        "at": 4,
        "throughputs": {"1": 200.0, "2": 40.0},
        "t": 3.1,
    },
    {"event": "moved", "node": 2, "iteration": 4, "source": 1, "target": 2, "sponsor": 3, "t": 3.4},
]


def test_tally_counts_resent_lost_moves_once_each():
    assert sr.tally(EVENTS) == {
        "rerouted": 2,
        "lost": 1,
        "moves": 1,
        "faults": 1,
        "rejoined": 1,
        "rejoined_at": 2,
        "degraded_iterations": 1,
    }
    assert sr.tally([]) == {
        "rerouted": 0,
        "lost": 0,
        "moves": 0,
        "faults": 0,
        "rejoined": 0,
        "rejoined_at": None,
        "degraded_iterations": 0,
    }


def test_losses_are_over_the_data_nodes_only():
    assert sr.losses(EVENTS, (0, 1)) == [[0, 5.5], [1, 3.75]]
    assert sr.losses(EVENTS, (0,)) == [[0, 6.0], [1, 3.0]]


def _result(variant, condition, times, losses, code=0):
    return {
        "scenario": "tiny",
        "variant": variant,
        "condition": condition,
        "node": 4,
        "time_scale": 4.0,
        "exit_code": code,
        "rerouted": 1,
        "lost": 0,
        "moves": 0,
        "wall_s": 20.0,
        "iterations": len(times),
        "iteration_s": times,
        "losses": losses,
    }


def test_rows_compare_losses_at_the_last_iteration_every_run_completed():
    a = _result("1f1b", "static", [9.0, 0.4, 0.2, 0.3], [[0, 6.0], [1, 5.0], [2, 4.0], [3, 3.0]])
    b = _result("swarm", "churn", [9.0, 0.5, 0.7], [[0, 6.1], [1, 5.1], [2, 4.1]], code=1)
    assert sr.common_iteration([a, b]) == 2
    assert sr.common_iteration([_result("swarm", "static", [], [])]) is None
    row = sr.row_of(a, 2)
    assert (row["median_s"], row["lo_s"], row["hi_s"]) == (0.3, 0.2, 0.4)  # iteration 0 excluded
    assert row["loss"] == 4.0 and row["loss_iteration"] == 2 and row["steady_iterations"] == 3
    empty = sr.row_of(_result("swarm", "static", [9.0], []), None, {"sim_median_s": 0.25})
    assert empty["median_s"] is None and empty["loss"] is None and empty["sim_median_s"] == 0.25


def test_table_has_one_line_per_row_and_dashes_for_missing_numbers():
    rows = [
        sr.row_of(_result("1f1b", "static", [9.0, 0.4, 0.2], [[0, 6.0], [2, 4.0]]), 2),
        sr.row_of(_result("swarm", "churn", [9.0], [], code=1), 2, {"sim_median_s": 0.31}),
    ]
    lines = sr.table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| variant | condition |")
    assert lines[2] == "| 1f1b | static | 4 | 0.30 | 0.20-0.40 | - | 4.0000 | 1 | 0 | 0 | 0 |"
    assert lines[3] == "| swarm | churn | 4 | - | - | 0.31 | - | 1 | 0 | 0 | 1 |"


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--variants", "swarm", "warp"], "unknown variant 'warp'"),
        (["--scenarios", "mars"], "unknown scenario 'mars'"),
        (["--conditions", "rain"], "unknown condition 'rain'"),
        (["--iterations", "3"], "--iterations must be at least 5"),
        (["--iterations", "x"], "invalid int value"),
        (["--figures", "no/such/dir"], "no such folder"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        sb.parse(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_quick_is_tiny_only_with_fewer_iterations():
    args = sb.parse(["--quick"])
    assert args.scenarios == ["tiny"] and args.iterations == sb.QUICK_ITERATIONS < sb.CASES["tiny"].iterations
    assert sb.parse(["--conditions", "static", "--iterations", "2"]).iterations == 2


class _Session:
    def __init__(self, iteration_s, rerouted=0, lost=0, moves=()):
        self.iteration_s, self.rerouted, self.lost, self.moves = iteration_s, rerouted, lost, list(moves)


class _Schedule:
    class _Variant:
        def __init__(self, routing):
            self.routing = routing

    def variant(self, name):
        return self._Variant("rule" if name.startswith("swarm") else None)


@pytest.fixture
def fake_session(monkeypatch):
    """skippipe.sim.session as the interface says (it may not exist yet): records its calls."""
    import sys
    import types

    calls = []
    mod = types.ModuleType("skippipe.sim.session")

    def simulate_session(schedule, variant, scenario, iterations, condition, seed=0):
        calls.append((variant, iterations, condition, seed))
        return _Session(
            [9.0] + [1.0 + seed / 10 + i / 100 for i in range(iterations - 1)], rerouted=seed, moves=[1]
        )

    mod.simulate_session = simulate_session
    monkeypatch.setitem(sys.modules, "skippipe.sim.session", mod)
    return calls


def test_simulated_planned_once_online_over_five_router_seeds(fake_session):
    planned = sb.simulated(_Schedule(), "ca-partial", None, "straggler", 4, 4)
    assert fake_session == [("ca-partial", 4, Condition((FailureSpec(4, 3, how="slow", factor=3.0),)), 0)]
    assert planned["sim_median_s"] == pytest.approx(1.01) and planned["sim_lo_s"] == 1.0
    assert planned["sim_hi_s"] == pytest.approx(1.02)  # min-max over iterations 1..3
    fake_session.clear()
    online = sb.simulated(_Schedule(), "swarm", None, "churn", 4, 4)
    assert [c[3] for c in fake_session] == [0, 1, 2, 3, 4]
    assert fake_session[0][2] == Condition((FailureSpec(4, sb.CRASH_AT),), {4: sb.BACK_AT})
    assert online["sim_median_s"] == pytest.approx(1.21) and online["sim_rerouted"] == 2  # medians over seeds
    assert (online["sim_lo_s"], online["sim_hi_s"]) == (pytest.approx(1.01), pytest.approx(1.41))
    assert online["sim_moves"] == 1


def test_plot_writes_a_png_with_and_without_simulated_medians(tmp_path):
    rows = [
        sr.row_of(
            _result("1f1b", "static", [9.0, 0.4, 0.2], [[2, 4.0]]),
            2,
            {"sim_median_s": 0.3, "sim_lo_s": 0.3, "sim_hi_s": 0.3},
        ),
        sr.row_of(_result("swarm", "churn", [9.0, 0.5], [[2, 4.1]]), 2),
        sr.row_of(_result("swarm", "static", [9.0], []), 2),
    ]  # no steady iteration: no bar
    sr.plot(rows, [tmp_path / "a.png", tmp_path / "b.png"])
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").is_file()
