"""bench/swarm_bench.py's pure helpers: the fault node by role, the --fail options, what a run's
events count, losses at equal iterations, the table; bad command lines exit 2 in one line.
No node process is started (the bench itself is run by hand)."""
import pytest

from bench import swarm_bench as sb


def test_fault_node_is_the_last_node_of_the_first_non_data_stage_with_a_peer():
    assert sb.fault_node(((2, 5), (3, 4), (1,), (0,))) == 4
    assert sb.fault_node(((0, 1), (2,), (3, 4, 5), (6, 7))) == 5  # stage 1 alone: skipped
    assert sb.fault_node(((0, 1), (2,), (3,))) is None  # only the data stage has peers


def test_fail_args_per_condition():
    assert sb.fail_args("static", 4) == []
    assert sb.fail_args("straggler", 4) == ["--fail", "node=4,iteration=3,phase=start,how=slow,factor=3"]
    assert sb.fail_args("churn", 4) == ["--fail", "node=4,iteration=2,phase=forward,how=crash"]


def _end(node, it, loss_sum=0.0, count=0, degraded=False):
    return {"event": "iteration_end", "node": node, "iteration": it, "t": 1.0 + it, "wall_s": 0.5,
            "loss_sum": loss_sum, "loss_count": count, "degraded": degraded}


EVENTS = [
    _end(0, 0, 12.0, 2), _end(1, 0, 10.0, 2), _end(2, 0),
    {"event": "fault", "node": 2, "iteration": 1, "how": "crash", "t": 2.0},
    {"event": "microbatch_rerouted", "node": 0, "iteration": 1, "microbatch": 3, "attempt": 1, "t": 2.1},
    {"event": "microbatch_rerouted", "node": 3, "iteration": 1, "microbatch": 4, "hop": 2, "t": 2.2},
    {"event": "microbatch_lost", "node": 0, "iteration": 1, "microbatch": 5, "t": 2.3},
    _end(0, 1, 9.0, 3, degraded=True), _end(1, 1, 6.0, 1, degraded=True),
    {"event": "rejoined", "node": 2, "iteration": 2, "sponsor": 3, "t": 3.0},
    # one rebalancing decision logged by two nodes, a second one, and a node_moved: three moves
    {"event": "rebalance", "node": 0, "iteration": 2, "moves": [[2, 1]], "t": 3.1},
    {"event": "rebalance", "node": 1, "iteration": 2, "moves": [[2, 1]], "t": 3.2},
    {"event": "rebalanced", "node": 0, "iteration": 3, "moves": [[4, 2]], "t": 3.3},
    {"event": "node_moved", "node": 4, "iteration": 3, "from_stage": 1, "to_stage": 2, "t": 3.4},
    {"event": "moved_on", "node": 4, "iteration": 3, "t": 3.5},  # not a move
]


def test_tally_counts_resent_lost_moves_once_each():
    assert sb.tally(EVENTS) == {"rerouted": 2, "lost": 1, "moves": 3, "faults": 1, "rejoined": 1,
                                "degraded_iterations": 1}
    assert sb.tally([]) == {"rerouted": 0, "lost": 0, "moves": 0, "faults": 0, "rejoined": 0,
                            "degraded_iterations": 0}


def test_losses_are_over_the_data_nodes_only():
    assert sb.losses(EVENTS, (0, 1)) == [[0, 5.5], [1, 3.75]]
    assert sb.losses(EVENTS, (0,)) == [[0, 6.0], [1, 3.0]]


def _result(variant, condition, times, losses, code=0):
    return {"scenario": "tiny", "variant": variant, "condition": condition, "node": 4, "time_scale": 4.0,
            "exit_code": code, "rerouted": 1, "lost": 0, "moves": 0, "wall_s": 20.0, "iterations": len(times),
            "iteration_s": times, "losses": losses}


def test_rows_compare_losses_at_the_last_iteration_every_run_completed():
    a = _result("1f1b", "static", [9.0, 0.4, 0.2, 0.3], [[0, 6.0], [1, 5.0], [2, 4.0], [3, 3.0]])
    b = _result("swarm", "churn", [9.0, 0.5, 0.7], [[0, 6.1], [1, 5.1], [2, 4.1]], code=1)
    assert sb.common_iteration([a, b]) == 2
    assert sb.common_iteration([_result("swarm", "static", [], [])]) is None
    row = sb.row_of(a, 2)
    assert (row["median_s"], row["lo_s"], row["hi_s"]) == (0.3, 0.2, 0.4)  # iteration 0 excluded
    assert row["loss"] == 4.0 and row["loss_iteration"] == 2 and row["steady_iterations"] == 3
    empty = sb.row_of(_result("swarm", "static", [9.0], []), None, {"sim_median_s": 0.25})
    assert empty["median_s"] is None and empty["loss"] is None and empty["sim_median_s"] == 0.25


def test_table_has_one_line_per_row_and_dashes_for_missing_numbers():
    rows = [sb.row_of(_result("1f1b", "static", [9.0, 0.4, 0.2], [[0, 6.0], [2, 4.0]]), 2),
            sb.row_of(_result("swarm", "churn", [9.0], [], code=1), 2, {"sim_median_s": 0.31})]
    lines = sb.table(rows).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| variant | condition |")
    assert lines[2] == "| 1f1b | static | 4 | 0.30 | 0.20-0.40 | - | 4.0000 | 1 | 0 | 0 | 0 |"
    assert lines[3] == "| swarm | churn | 4 | - | - | 0.31 | - | 1 | 0 | 0 | 1 |"


@pytest.mark.parametrize("argv,says", [(["--variants", "swarm", "warp"], "unknown variant 'warp'"),
                                       (["--scenarios", "mars"], "unknown scenario 'mars'"),
                                       (["--conditions", "rain"], "unknown condition 'rain'"),
                                       (["--iterations", "3"], "--iterations must be at least 5"),
                                       (["--iterations", "x"], "invalid int value")])
def test_bad_command_lines_exit_2_with_one_line(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        sb.parse(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_quick_is_tiny_only_with_fewer_iterations():
    args = sb.parse(["--quick"])
    assert args.scenarios == ["tiny"] and args.iterations == sb.QUICK_ITERATIONS < sb.CASES["tiny"].iterations
    assert sb.parse(["--conditions", "static", "--iterations", "2"]).iterations == 2
