"""Every bad input is one line on stderr, exit code 2, and leaves nothing behind (no run
directory, no result file). The same cases make the table of bad inputs in docs/running.md: a
test checks that the table is what these commands print today (UPDATE_README=1 rewrites it)."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SETTINGS
from schedules import make_paths, make_schedule
from schedules import tiny as tiny_scenario
from skippipe.cli import COMMANDS, main
from skippipe.schedule_file import to_dict

README = ROOT / "docs" / "running.md"  # the page with the bad-input table
TABLE_START, TABLE_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
RUN = ["run", "0", "6", "ca-partial", "2"]
UNWRITABLE = "/proc/skippipe/x"  # no one, root included, can create files there

# (argv, what the one line must contain); FILE.toml names stand for files made below
CASES = [
    (RUN + ["--iterations", "-3"], "--iterations must be positive"),
    (RUN + ["--iterations", "0"], "--iterations must be positive"),
    (RUN + ["--time-scale", "-1"], "--time-scale must be positive"),
    (RUN + ["--time-scale", "0"], "--time-scale must be positive"),
    (RUN + ["--timeout", "0"], "--timeout must be positive"),
    (RUN + ["--peer-timeout", "0"], "--peer-timeout must be positive"),
    (RUN + ["--base-port", "70000"], "--base-port must be in 1..65535"),
    (RUN + ["--base-port", "65533"], "above 65535"),
    (RUN + ["--runs", UNWRITABLE], "--runs"),
    (RUN + ["--gantt", UNWRITABLE + "/g.png"], "--gantt"),
    (RUN + ["--host", "no-such-host.invalid"], "does not resolve"),
    (RUN + ["--host", "192.0.2.1"], "not an address of this machine"),
    (["run", "0", "6", "ca-partial", "-2"], "MB (samples per microbatch)"),
    (["run", "0", "9", "ca-partial", "2"], "outside the scenario's nodes"),
    (RUN + ["--fail", "node=99"], "node 99 is not in the scenario"),
    (RUN + ["--fail", "node=1,how=explode"], "--fail"),
    (RUN + ["--scenario", "latin1.toml"], "not UTF-8"),
    (RUN + ["--scenario", "dup-link.toml"], "given twice with different values"),
    (RUN + ["--peers", "peers-bad-port.json"], "port outside 1..65535"),
    (RUN + ["--time-scale", "inf"], "--time-scale must be positive and finite"),
    (RUN + ["--scenario", "huge.toml"], "node_generator.count: 10000000 nodes"),
    (RUN + ["--run-key-file", "open.key"], "others may read or change it (mode 0644)"),
    (["simulate", "latin1.json"], "not valid JSON"),
    (["simulate", "no-variants.json"], "no-variants.json: no variants"),
    (["simulate", "v3.json"], "v3.json: schema_version 3 is not 2"),
    (["simulate", "bad-int.json"], "bad-int.json: expected an integer"),
    (["simulate", "schedules/tiny.json", "--gantt", UNWRITABLE + "/g.png"], "--gantt"),
    (["simulate", "schedules/tiny.json", "--iterations", "0"], "--iterations must be positive"),
    (["simulate", "schedules/tiny.json", "--rejoin", "4:x"], "NODE:ITERATION"),
    (["train", "settings/tiny.toml", "--lr", "-1"], "--lr must be positive"),
    (["train", "settings/tiny.toml", "--lr", "inf"], "--lr must be positive and finite"),
    (["train", "settings/tiny.toml", "--iterations", "0"], "--iterations must be positive"),
    (["infer", "no-such-run"], "not a usable run config"),
    (["evaluate", "no-such-run", "--max-batches", "0"], "--max-batches"),
]


def _inputs(tmp_path) -> dict[str, str]:
    """The files the cases name, made in `tmp_path`."""
    tiny = (SETTINGS / "tiny.toml").read_text()
    duplicate = tiny.replace(
        "links = [\n", 'links = [\n  { a = "east", b = "west", latency_ms = 1, bandwidth_gib_s = 1 },\n', 1
    )
    assert duplicate != tiny
    files = {
        "latin1.toml": b"\xff\xfe[model]\n",
        "latin1.json": b"\xff\xfe{}",
        "dup-link.toml": duplicate.encode(),
        "peers-bad-port.json": b'{"0": "127.0.0.1:70000", "1": "127.0.0.1:1", "2": "127.0.0.1:2", "3": "127.0.0.1:3", '
        b'"4": "127.0.0.1:4", "5": "127.0.0.1:5"}',
    }
    files["huge.toml"] = re.sub(r"count = \d+", "count = 10000000", tiny, count=1).encode()
    plan = to_dict(make_schedule(tiny_scenario(), make_paths()))
    files["no-variants.json"] = json.dumps({**plan, "variants": {}}).encode()
    files["v3.json"] = json.dumps({**plan, "schema_version": 3}).encode()
    files["bad-int.json"] = json.dumps({**plan, "allocation": {"stages": [["0"]]}}).encode()
    files["open.key"] = b"ab" * 32
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.chmod(tmp_path / "open.key", 0o644)
    return {name: str(tmp_path / name) for name in files}


def _run(argv, tmp_path, capsys) -> tuple[int, str, str]:
    files = _inputs(tmp_path)
    argv = [files.get(a, a) for a in argv]
    if argv[0] == "run" and "--runs" not in argv:
        argv += ["--runs", str(tmp_path / "runs")]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.replace(str(tmp_path) + "/", "")


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's relative paths (settings/, schedules/)
    before = set(os.listdir(ROOT))
    code, out, err = _run(argv, tmp_path, capsys)
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), (out, err)
    assert expected in err
    assert not (tmp_path / "runs").exists()
    assert set(os.listdir(ROOT)) == before  # no result file, no run directory in the repository


def table(tmp_path, capsys) -> str:
    """README's table: each case's command, its one line, its exit code."""
    rows = ["| command | message | exit |", "|---|---|---|"]
    for argv, _ in CASES:
        code, _, err = _run(argv, tmp_path, capsys)
        line = err.strip().replace("|", "\\|")
        rows.append(f"| `python -m skippipe {' '.join(argv)}` | {line} | {code} |")
    return "\n".join(rows)


def test_readme_table_of_bad_inputs_is_current(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = README.read_text()
    current = re.search(re.escape(TABLE_START) + r"\n(.*?)" + re.escape(TABLE_END), text, re.S)
    assert current is not None, f"{README.name} lacks the {TABLE_START} ... {TABLE_END} section"
    fresh = table(tmp_path, capsys) + "\n"
    if os.environ.get("UPDATE_README"):
        README.write_text(text[: current.start(1)] + fresh + text[current.end(1) :])
    else:
        stale = f"{README.name}: the bad-input table is stale; rerun with UPDATE_README=1"
        assert current.group(1) == fresh, stale


def test_a_failed_inference_leaves_no_plan_or_result(tmp_path):
    from skippipe.runtime.launch.infer import _removed_on_error

    plan, result = tmp_path / "infer-failed-4.json", tmp_path / "infer-failed-4.result.json"
    with pytest.raises(RuntimeError):
        with _removed_on_error(plan, result):
            plan.write_text("{}")
            result.write_text("{}")
            raise RuntimeError("the nodes failed")
    assert not plan.exists() and not result.exists()
    with _removed_on_error(plan, result):
        plan.write_text("{}")
    assert plan.exists()  # a command that succeeds keeps its record


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("SKIPPIPE_BASE_PORT", "abc", "SKIPPIPE_BASE_PORT='abc' is not an integer"),
        ("SKIPPIPE_ITERATIONS", "two", "SKIPPIPE_ITERATIONS='two' is not an integer"),
        ("SKIPPIPE_TIME_SCALE", "fast", "SKIPPIPE_TIME_SCALE='fast' is not a number"),
    ],
)
def test_a_bad_environment_variable_is_one_line(name, value, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(name, value)
    code, out, err = _run(RUN, tmp_path, capsys)
    assert code == 2 and out == "" and err == f"error: {expected}\n", (out, err)


HELP_COMMANDS = [[sys.executable, "-m", "skippipe", name, "--help"] for name in COMMANDS] + [
    [sys.executable, "-m", "skippipe", "--help"],
    [sys.executable, "create_schedule.py", "--help"],
    ["./run.sh", "0", "1", "ca-partial", "0", "--help"],
]


@pytest.mark.slow
@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=[" ".join(a[1:]) for a in HELP_COMMANDS])
def test_every_command_has_help(argv):
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "usage:" in done.stdout


def _failing_random(monkeypatch, how: str) -> None:
    """The random variant fails to plan (`how` = plan) or to validate (`how` = check)."""
    from skippipe import planning
    from skippipe.errors import ScheduleError
    from skippipe.planner import baselines
    from skippipe.planner.paths import PlanningError

    def fail(*args, **kwargs):
        raise PlanningError("no paths today")

    if how == "plan":
        monkeypatch.setattr(baselines, "random_variant", fail)
    else:
        real = planning.validate

        def validate(sched, scenario, where="schedule"):
            if "random" in sched.variants:
                raise ScheduleError("variant random: TC1: stage 3 gets 82 forward visits")
            real(sched, scenario, where)

        monkeypatch.setattr(planning, "validate", validate)


@pytest.mark.parametrize("how", ["plan", "check"])
def test_a_variant_that_fails_is_left_out_and_the_others_are_written(how, tmp_path, capsys, monkeypatch):
    _failing_random(monkeypatch, how)
    out = tmp_path / "tiny.json"
    code = main(
        [
            "schedule",
            str(SETTINGS / "tiny.toml"),
            "--out",
            str(out),
            "--variants",
            "baseline",
            "random",
            "--time-limit",
            "2",
            "--workers",
            "1",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert [line for line in stderr.splitlines() if "failed" in line] == [
        next(line for line in stderr.splitlines() if "random failed, left out: " in line)
    ]
    assert re.search(r"^random .* FAILED: .*(no paths today|82 forward visits)$", stdout, re.M), stdout
    written = json.loads(out.read_text())["variants"]
    assert list(written) == ["baseline"]


def test_a_build_where_every_variant_fails_is_one_line(tmp_path, capsys, monkeypatch):
    _failing_random(monkeypatch, "plan")
    out = tmp_path / "tiny.json"
    code = main(
        [
            "schedule",
            str(SETTINGS / "tiny.toml"),
            "--out",
            str(out),
            "--variants",
            "random",
            "--time-limit",
            "2",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    _, stderr = capsys.readouterr()
    assert code == 2 and stderr.splitlines()[-1] == "error: random: no paths today", stderr
    assert not out.exists()


def test_a_private_key_file_is_read(tmp_path):
    from skippipe.runtime.net.auth import RunAuth

    key = tmp_path / "run.key"
    key.write_text("cd" * 32 + "\n")
    os.chmod(key, 0o600)
    assert RunAuth.load(str(key)).key == bytes.fromhex("cd" * 32)


def test_a_failed_inference_keeps_only_the_failed_nodes_logs_and_names_them(tmp_path):
    from skippipe.errors import SkipPipeError
    from skippipe.runtime.launch.infer import _tidy_logs

    for n in range(5):
        (tmp_path / f"node-{n}-infer-node.log").write_text("...")
    expected = f"inference node\\(s\\) 3 failed; see {tmp_path}/node-3-infer-node.log$"
    with pytest.raises(SkipPipeError, match=expected):
        _tidy_logs(tmp_path, range(5), [3], "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-3-infer-node.log"]
    _tidy_logs(tmp_path, [3], [], "failed")  # a run that succeeds leaves none
    assert list(tmp_path.iterdir()) == []
