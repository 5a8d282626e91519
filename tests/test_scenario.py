import subprocess
import sys

import pytest

from conftest import ROOT, SETTINGS
from skippipe.costs import Costs
from skippipe.scenario import load_scenario
from skippipe.settings_checks import ScenarioError

ALL = sorted(SETTINGS.glob("*.toml"))


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_every_settings_file_loads(path):
    sc = load_scenario(path)
    assert len(sc.nodes) == sum(sc.pipeline.stage_sizes)
    for a in range(len(sc.nodes)):
        assert sc.link(a, (a + 1) % len(sc.nodes)).bandwidth_bytes_per_s > 0


def test_geo_distributed_matches_the_paper():
    sc = load_scenario(SETTINGS / "geo-distributed.toml")
    c = Costs(sc)
    assert sc.pipeline.stage_sizes == (5, 3, 3, 3, 3, 3) and sc.pipeline.path_length == 4
    assert c.activation_bytes == 32 * 1024**2  # 32 MiB per microbatch of 8 samples
    assert c.forward_s(0) == pytest.approx(1.76)  # 0.055 s x 4 layers x 8 samples
    assert c.backward_s(0) == pytest.approx(2.64) and c.loss_s(0) == pytest.approx(0.44)
    # round-robin over 12 regions: node 12 is back in Australia
    assert sc.nodes[12].location == sc.nodes[0].location == "Australia"
    # Australia-Belgium: 129 ms + 32 MiB / (0.00982666 GiB/s) + 0.35 s
    assert c.link_s(0, 1) == pytest.approx(0.129 + (32 / 1024) / 0.00982666015625 + 0.35)


def test_nl_london_treated_as_typo_unless_kept():
    fixed = load_scenario(SETTINGS / "geo-distributed.toml").network.link("NL", "London")
    raw = load_scenario(SETTINGS / "geo-distributed-nl-london-raw.toml").network.link("NL", "London")
    assert fixed.bandwidth_bytes_per_s > 500 * raw.bandwidth_bytes_per_s


def test_hetero_gpus_differ_in_speed_and_memory():
    sc = load_scenario(SETTINGS / "hetero-gpus.toml")
    speeds = {n.compute_s_per_sample_per_layer for n in sc.nodes}
    assert max(speeds) / min(speeds) == pytest.approx(4.0)
    assert len({n.memory_slots for n in sc.nodes}) > 1


def _write(tmp_path, text: str):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _tiny_text(**replace) -> str:
    text = (SETTINGS / "tiny.toml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize(
    "old,new,key",
    [
        ("d_model = 64", "d_model = 64\ncolour = 3", "model.colour"),
        ("path_length = 3", "path_length = 0", "pipeline.path_length"),
        ("memory_slots = 2", "memory_slots = -1", "pipeline.memory_slots"),
        ("per_hop_overhead_s = 0.002", "per_hop_overhead_s = -1.0", "costs.per_hop_overhead_s"),
        (
            '  { a = "west", b = "north", latency_ms = 12, bandwidth_gib_s = 0.02 },\n',
            "",
            "missing location pair west-north",
        ),
        (
            '{ a = "east", b = "west", latency_ms = 20, bandwidth_gib_s = 0.01 }',
            '{ a = "east", b = "west", latency_ms = 20, bandwidth_gib_s = 0.0 }',
            "bandwidth_gib_s",
        ),
        ("[training]", "[trainin]", "trainin"),
        ("stage_sizes = [2, 2, 1, 1]", "stage_sizes = [2, 2, 1, 2]", "pipeline.stage_sizes"),
        ("path_length = 3", "path_length = 5", "pipeline.path_length"),
        ("n_layers = 4 ", "n_layers = 6 ", "model.n_layers"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path, old, new, key):
    p = _write(tmp_path, _tiny_text(**{old: new}))
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert str(p) in str(e.value) and key in str(e.value)


def test_not_toml(tmp_path):
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(_write(tmp_path, "[model\n"))


def test_command_reports_one_line_and_exit_2(tmp_path):
    p = _write(tmp_path, _tiny_text(**{"d_model = 64": "d_model = 64\ncolour = 3"}))
    r = subprocess.run(
        [sys.executable, "create_schedule.py", str(p)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model.colour" in r.stderr


def test_content_hash_tracks_content(tmp_path):
    a = load_scenario(SETTINGS / "tiny.toml")
    b = load_scenario(_write(tmp_path, _tiny_text(**{"memory_slots = 2": "memory_slots = 3"})))
    assert a.content_hash != b.content_hash
    assert a.content_hash == load_scenario(SETTINGS / "tiny.toml").content_hash


def test_weight_grad_share_splits_the_backward():
    tiny = SETTINGS / "tiny.toml"
    sc = load_scenario(tiny)
    c = Costs(sc)
    assert c.op_s("B", 0, split=True) + c.op_s("W", 0) == pytest.approx(c.op_s("B", 0))
    assert c.op_s("W", 0) == pytest.approx(0.5 * c.backward_s(0))  # the default share
    # at its default the key leaves the content hash alone: older schedules still load
    assert load_scenario(tiny, {"costs.weight_grad_share": 0.5}).content_hash == sc.content_hash
    other = load_scenario(tiny, {"costs.weight_grad_share": 0.4})
    assert other.content_hash != sc.content_hash
    assert Costs(other).op_s("W", 0) == pytest.approx(0.4 * c.backward_s(0))
    with pytest.raises(ScenarioError, match="weight_grad_share: must be below 1"):
        load_scenario(tiny, {"costs.weight_grad_share": 1.0})


def test_content_hash_covers_only_what_planners_read(tmp_path):
    """Changing [training] (time scale, iterations, learning rate, ...) or the runtime's optional
    sections keeps a schedule valid; the planners' inputs do not."""
    from schedules import make_paths, make_schedule
    from skippipe.schedule import ScheduleError
    from skippipe.schedule_file import load_schedule, save_schedule

    a = load_scenario(SETTINGS / "tiny.toml")
    training = load_scenario(
        _write(
            tmp_path,
            _tiny_text(
                **{
                    "time_scale = 1.0": "time_scale = 8.0",
                    "iterations = 3": "iterations = 40",
                    "learning_rate = 3e-3": "learning_rate = 1e-4",
                    "seed = 0": "seed = 7",
                }
            ),
        )
    )
    assert training.training != a.training and training.content_hash == a.content_hash
    faults = load_scenario(_write(tmp_path, _tiny_text() + "\n[faults]\nrandom_rate = 0.5\n"))
    assert faults.content_hash == a.content_hash
    for change in (
        {"loss_factor = 0.25": "loss_factor = 0.5"},
        {"d_model = 64": "d_model = 128"},
        {"latency_ms = 20": "latency_ms = 21"},
        {"count = 6 ": "count = 6\ncompute_factors = [1, 2]"},
    ):
        assert load_scenario(_write(tmp_path, _tiny_text(**change))).content_hash != a.content_hash, change

    path = tmp_path / "tiny.json"
    save_schedule(make_schedule(a, make_paths()), path)
    load_schedule(path, training)  # still valid: no re-plan
    with pytest.raises(ScheduleError, match="re-plan"):
        load_schedule(
            path, load_scenario(_write(tmp_path, _tiny_text(**{"memory_slots = 2": "memory_slots = 3"})))
        )
