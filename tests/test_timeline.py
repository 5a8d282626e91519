"""Timeline: JSONL round trip (one file or one per node), Chrome trace, Gantt PNG."""

import json

import pytest

from skippipe.timeline import TimelineError, chrome_trace, gantt_png, read_jsonl, write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _op(t, node, kind, mb, hop, stage, dur, iteration=0):
    return {
        "t": t,
        "node": node,
        "event": "op",
        "kind": kind,
        "microbatch": mb,
        "hop": hop,
        "stage": stage,
        "dur": dur,
        "iteration": iteration,
    }


EVENTS = [
    _op(0.0, 0, "F", 0, 0, 0, 1.0),
    {"t": 1.0, "node": 0, "event": "send", "dst": 1, "microbatch": 0, "bytes": 8, "arrive": 1.5},
    _op(1.5, 1, "F", 0, 1, 1, 1.0),
    {"t": 2.5, "node": 1, "event": "send", "dst": 0, "microbatch": 0, "bytes": 8, "arrive": 3.0},
    _op(3.0, 0, "L", 0, 0, 0, 0.25),
    _op(3.25, 0, "B", 0, 0, 0, 1.5),
    _op(4.75, 0, "AVG", None, None, 0, 0.5),
]


def test_jsonl_round_trip(tmp_path):
    path = write_jsonl(EVENTS, tmp_path / "sub" / "events.jsonl")
    assert read_jsonl(path) == EVENTS
    assert len(path.read_text().splitlines()) == len(EVENTS)


def test_read_merges_one_file_per_node_and_skips_a_cut_off_line(tmp_path, caplog):
    for node in (0, 1):
        write_jsonl([e for e in EVENTS if e["node"] == node], tmp_path / f"node{node}.jsonl")
    with open(tmp_path / "node1.jsonl", "a") as f:
        f.write('\n{"t": 9.0, "node": 1, "ev')  # the node died mid-line
    assert read_jsonl(tmp_path) == EVENTS
    assert "skipped 1 unreadable line" in caplog.text
    files = [tmp_path / "node1.jsonl", tmp_path / "node0.jsonl"]
    assert read_jsonl(files) == EVENTS


def test_read_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TimelineError, match="no such timeline"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_chrome_trace_has_complete_events_per_node(tmp_path):
    path = chrome_trace(EVENTS, tmp_path / "trace.json")
    trace = json.loads(path.read_text())["traceEvents"]
    complete = [e for e in trace if e["ph"] == "X"]
    assert len(complete) == len(EVENTS)
    f1 = next(e for e in complete if e["name"] == "F mb0 h1")
    assert (f1["pid"], f1["ts"], f1["dur"]) == (1, 1.5e6, 1.0e6)
    send = next(e for e in complete if e["cat"] == "send" and e["pid"] == 0)
    assert (send["tid"], send["dur"]) == ("send->1", 0.5e6)
    names = {e["pid"]: e["args"]["name"] for e in trace if e["ph"] == "M"}
    assert names == {0: "node 0 (stage 0)", 1: "node 1 (stage 1)"}


def test_gantt_png_draws_predicted_beside_measured(tmp_path):
    measured = [dict(e, t=e["t"] * 1.1) for e in EVENTS]
    path = gantt_png([("predicted", EVENTS), ("measured", measured)], tmp_path / "g" / "gantt.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_gantt_png_needs_a_timeline(tmp_path):
    with pytest.raises(TimelineError):
        gantt_png([], tmp_path / "g.png")


def _png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR w, h


def test_gantt_png_lays_panels_out_in_columns(tmp_path):
    panels = [(f"family {i}", EVENTS) for i in range(3)]
    stacked = _png_size(gantt_png(panels, tmp_path / "stacked.png"))
    grid = _png_size(gantt_png(panels, tmp_path / "grid.png", columns=2))
    assert grid[0] == stacked[0]  # same width, two rows of panels instead of three
    assert grid[1] < stacked[1]


def test_gantt_png_needs_a_column(tmp_path):
    with pytest.raises(TimelineError, match="column"):
        gantt_png([("one", EVENTS)], tmp_path / "g.png", columns=0)
