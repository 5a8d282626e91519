"""The loss placement as a settings key (`[pipeline] loss_at`) and as `compare --loss-at`: read by
`schedule` and `compare`, kept out of the plan hash, one line naming the file on a bad value."""

import json

import pytest

from conftest import SETTINGS
from skippipe.cli import main
from skippipe.scenario import load_scenario
from skippipe.schedule_file import load_schedule
from skippipe.settings_checks import ScenarioError

TINY = SETTINGS / "tiny.toml"
QUICK = ["--effort", "quick", "--quiet"]
VARIANTS = ["baseline", "1f1b", "ca-partial"]


def _tiny_with(tmp_path, line: str):
    text = TINY.read_text()
    assert "[pipeline]\n" in text
    path = tmp_path / "tiny-loss.toml"
    path.write_text(text.replace("[pipeline]\n", f"[pipeline]\n{line}\n"))
    return path


def test_the_key_is_read_and_leaves_the_plan_hash_alone(tmp_path):
    default = load_scenario(TINY)
    origin = load_scenario(_tiny_with(tmp_path, 'loss_at = "origin"'))
    assert default.pipeline.loss_at is None and origin.pipeline.loss_at == "origin"
    assert origin.content_hash == default.content_hash  # each variant records its own placement


@pytest.mark.parametrize(
    "line,shown", [('loss_at = "middle"', "'middle'"), ("loss_at = 1", "1"), ('loss_at = ""', "''")]
)
def test_a_bad_value_names_the_file_and_the_key(tmp_path, line, shown):
    path = _tiny_with(tmp_path, line)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(path) in str(e.value) and "pipeline.loss_at" in str(e.value) and shown in str(e.value)


def test_a_bad_value_is_one_line_and_exit_2_in_both_commands(tmp_path, capsys):
    path = _tiny_with(tmp_path, 'loss_at = "middle"')
    for argv in (
        ["schedule", str(path), "--out", str(tmp_path / "s.json")],
        ["compare", str(path), "--out", str(tmp_path / "c")],
    ):
        assert main([*argv, *QUICK]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and "pipeline.loss_at" in err and "\n" not in err
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "c").exists()


def test_schedule_follows_the_key_and_the_option_overrides_it(tmp_path):
    path = _tiny_with(tmp_path, 'loss_at = "origin"')
    for extra, want in (([], "origin"), (["--loss-at", "last"], "last")):
        out = tmp_path / f"s-{want}.json"
        assert main(["schedule", str(path), "--variants", *VARIANTS, "--out", str(out), *extra, *QUICK]) == 0
        sched, _ = load_schedule(out)
        assert sched.variants["baseline"].loss_at == sched.variants["1f1b"].loss_at == want
        assert sched.variants["ca-partial"].loss_at == "origin"  # a partial path may skip the last stage


def test_compare_places_the_full_pipelines_loss_as_asked(tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        main(
            ["compare", str(TINY), "--variants", *VARIANTS, "--loss-at", "origin", "--out", str(out), *QUICK]
        )
        == 0
    )
    got = json.loads((out / "compare.json").read_text())
    assert got["loss_at"] == "origin" and {r["loss"] for r in got["rows"]} == {"origin"}
    assert "--loss-at origin" in (out / "compare.md").read_text().splitlines()[0]
    capsys.readouterr()
    # the schedule it wrote has the full pipelines' loss at the origin: not what --loss-at last asks
    assert (
        main(
            [
                "compare",
                str(TINY),
                "--schedule",
                str(out / "schedule.json"),
                "--loss-at",
                "last",
                "--out",
                str(tmp_path / "again"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "baseline, 1f1b planned with the loss at origin, not last" in err and "\n" not in err


def test_compare_reads_the_key(tmp_path):
    out = tmp_path / "c"
    path = _tiny_with(tmp_path, 'loss_at = "origin"')
    assert main(["compare", str(path), "--variants", "baseline", "--out", str(out), *QUICK]) == 0
    (row,) = json.loads((out / "compare.json").read_text())["rows"]
    assert row["loss"] == "origin"
