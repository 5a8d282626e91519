"""util/rundir.py: fresh, uniquely named run directories; util/peers.py: peer tables."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from skippipe.errors import SkipPipeError
from skippipe.util.peers import load_peers, local_peers
from skippipe.util.rundir import new_run_dir, shown


def test_run_directories_are_fresh_and_uniquely_named(tmp_path):
    dirs = [new_run_dir("ca-partial", tmp_path / "runs") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() and d.parent == tmp_path / "runs" for d in dirs)
    pattern = rf"\d{{8}}-\d{{6}}-ca-partial-{os.getpid()}(-\d+)?"
    assert all(re.fullmatch(pattern, d.name) for d in dirs)


def test_an_unusable_root_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SkipPipeError, match="cannot create run directory"):
        new_run_dir("x", tmp_path / "file")


def test_shown_is_relative_below_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "runs" / "a") == os.path.join("runs", "a")
    assert shown("/elsewhere/a") == "/elsewhere/a"


def test_peer_tables(tmp_path):
    assert local_peers(range(3), "127.0.0.1", 29500) == {
        0: ("127.0.0.1", 29500),
        1: ("127.0.0.1", 29501),
        2: ("127.0.0.1", 29502),
    }
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"0": "10.0.0.1:29500", "1": "[::1]:29501"}))
    assert load_peers(path, 2) == {0: ("10.0.0.1", 29500), 1: ("[::1]", 29501)}
    with pytest.raises(SkipPipeError, match="no address for node 2"):
        load_peers(path, 3)
    path.write_text(json.dumps({"0": "no-port"}))
    with pytest.raises(SkipPipeError, match="not a peer table"):
        load_peers(path)


def test_kept_files_are_recorded_by_a_relative_name_that_survives_a_move(tmp_path):
    from skippipe.util.rundir import keep_in, resolve_in

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tok.model").write_bytes(b"model")
    name = keep_in(tmp_path / "run" / "checkpoint", tmp_path / "cache" / "tok.model")
    assert name == "tok.model"
    (tmp_path / "run").rename(tmp_path / "moved")
    assert resolve_in(tmp_path / "moved" / "checkpoint", name).read_bytes() == b"model"
    assert keep_in(tmp_path / "x", "no-such.model") == "no-such.model"  # nothing to keep
    assert resolve_in(tmp_path, "/abs/tok.model") == Path("/abs/tok.model")


def test_outputs_are_checked_before_any_work_and_nothing_is_created(tmp_path):
    from skippipe.util.rundir import can_create, writable_output

    assert writable_output(tmp_path / "a" / "b" / "g.png", "--gantt") == tmp_path / "a" / "b" / "g.png"
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(SkipPipeError, match="--runs x: cannot write in .*file"):
        can_create(tmp_path / "file" / "runs", "--runs x")
    with pytest.raises(SkipPipeError, match="is a directory"):
        writable_output(tmp_path, "--gantt")
