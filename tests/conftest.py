"""Shared test set-up: the tiny scenario and its schedules (pytest puts the repository root on
the path: pyproject.toml's `pythonpath`, for the benches the tests drive).

Tests that start node processes are marked `swarm`, single-process tests that take seconds
`slow` (see pyproject.toml); `pytest -m "not swarm and not slow"` is the fast loop."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "settings"


@pytest.fixture(scope="session")
def tiny_scenario():
    """settings/tiny.toml, loaded once."""
    from skippipe.scenario import load_scenario

    return load_scenario(SETTINGS / "tiny.toml")


@pytest.fixture(scope="session")
def tiny_schedule(tmp_path_factory, tiny_scenario):
    """A planned schedule of the tiny scenario (every variant; one worker, 5 s), as a file."""
    from skippipe.plan_options import PlanOptions
    from skippipe.planning import build_schedule
    from skippipe.schedule_file import save_schedule

    sched = build_schedule(tiny_scenario, PlanOptions(time_limit_s=5, workers=1))
    path = tmp_path_factory.mktemp("schedule") / "tiny.json"
    save_schedule(sched, path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _fork_server_stopped():
    """Launches made inside the test process (compare --emulate) fork their nodes from a server
    that would live until pytest exits; stop it with the session."""
    yield
    from skippipe.runtime.launch.forks import stop_server

    stop_server()
