"""runtime/launch/forks.py: a forked node is what `python -m skippipe ARGS` would have been (its
exit code, its log, the caller's directory and environment). The run tests (test_hygiene.py)
stop forked nodes by their sessions and check that a killed launcher leaves none behind."""

from __future__ import annotations

import pytest

from skippipe.runtime.launch import forks

DEADLINE_S = 60.0  # the first start imports torch in the server


@pytest.mark.swarm
def test_a_forked_command_exits_and_logs_as_the_command_line_would(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok = forks.start(["--help"], tmp_path / "help.log")
    bad = forks.start(["no-such-command"], tmp_path / "bad.log")
    assert ok.wait(DEADLINE_S) == 0 and bad.wait(DEADLINE_S) == 2
    assert (tmp_path / "help.log").read_text().startswith("usage: python -m skippipe")
    assert "invalid choice: 'no-such-command'" in (tmp_path / "bad.log").read_text()
    assert ok.returncode == 0 and ok.poll() == 0


@pytest.mark.swarm
def test_a_forked_command_has_the_callers_environment_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIPPIPE_ITERATIONS", "many")  # read by the run command's defaults
    child = forks.start(["run", "0", "6", "ca-partial", "2"], "run.log")  # relative: to tmp_path
    assert child.wait(DEADLINE_S) == 2
    assert (tmp_path / "run.log").read_text() == "error: SKIPPIPE_ITERATIONS='many' is not an integer\n"
