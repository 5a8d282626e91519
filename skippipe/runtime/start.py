"""What `./run.sh FIRST LAST SETTING MB` does before and around the launcher: from the run
command's options to a RunConfig (scenario, schedule, data caches, peers, free ports, run
directory), then the launched run and its summary; and `--rejoin` into a running training."""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import SkipPipeError
from ..planning import PlanOptions, build_schedule
from ..scenario import Scenario, load_scenario
from ..schedule import ScheduleError, VariantSchedule, load_schedule, save_schedule
from ..util.peers import Peers, load_peers, local_peers
from ..util.peers import PORT_MAX
from ..util.ports import reserve_ports
from ..util.rundir import can_create, new_run_dir, shown, writable_output
from . import launch
from .auth import RunAuth
from .emulation import Emulation
from .runconfig import RunConfig, load_config

CONNECT_TIMEOUT_S = 60.0  # wall seconds for every peer to come up
TIMEOUT_FACTOR = 20.0  # the whole run may take this many times its predicted duration ...
TIMEOUT_SLACK_S = 120.0  # ... plus this (start-up, tokenizer training on first use)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The run command's options (commands/run.py documents each)."""
    first: int
    last: int
    setting: str  # variant to train along
    mb: int  # samples per microbatch; 0: the scenario's
    scenario: str
    host: str
    base_port: int
    runs: str
    plan_time_limit: float
    peer_timeout: float
    schedule: str | None = None
    iterations: int | None = None
    time_scale: float | None = None
    no_emulate_compute: bool = False
    no_emulate_links: bool = False
    peers: str | None = None
    seed: int | None = None
    fail: Sequence[str] = ()  # failure specs (faults.py)
    checkpoint: bool = False
    stand_in_model: str = ""
    gantt: str | None = None
    timeout: float | None = None
    rejoin: str | None = None
    dump_gradients: bool = False
    run_key_file: str | None = None  # multi-host: the run's shared key (else $SKIPPIPE_RUN_KEY, else new)


def run_command(opts: RunOptions, say=print) -> int:
    """Train (or rejoin) as the options say; the exit code."""
    if opts.rejoin:
        return rejoin(opts, say)
    return train(opts, say)


def train(opts: RunOptions, say=print) -> int:
    """Start this host's nodes, follow them to the end, print the summary (and a Gantt chart)."""
    from ..sim.simulate import simulate
    from .faults import parse_failures

    check_options(opts)
    auth = RunAuth.load(opts.run_key_file)  # a bad key fails before anything is made
    sc = scenario_for(opts.scenario, opts.mb or None)
    nodes = check_range(opts.first, opts.last, sc)
    failures = tuple(parse_failures(list(opts.fail), sc))
    peers = _peers(opts, len(sc.nodes))
    # held from here to the end: a second run on these ports stops here, before it plans
    with reserve_ports(peers, nodes):
        sched_path = ensure_schedule(sc, opts.setting, opts.schedule, opts.plan_time_limit, say)
        sched, _ = load_schedule(sched_path, sc)
        variant = sched.variant(opts.setting)
        predicted = (variant.predicted["iteration_s"] if variant.routing  # online: mean over seeds
                     else simulate(sched, opts.setting, sc).iteration_s)
        _prepare_data(sc, opts.stand_in_model, say)
        cfg = _config(opts, sc, Path(sched_path), variant, sched.allocation_of(opts.setting)[0], peers,
                      nodes, failures, auth)
        timeout = opts.timeout or (TIMEOUT_SLACK_S + TIMEOUT_FACTOR * cfg.iterations
                                   * Emulation.from_config(cfg).wall_s(predicted))
        say(f"run {shown(cfg.run_dir)}: nodes {nodes.start}..{nodes.stop - 1} of {sc.name} "
            f"({len(sc.nodes)} nodes), {opts.setting}, {cfg.iterations} iterations, "
            f"{sc.pipeline.samples_per_microbatch} samples per microbatch, time scale {cfg.time_scale:g}")
        result = launch.run(cfg, nodes, predicted, timeout, say)
    say(launch.summary(result.iterations))
    if opts.gantt and result.iterations:
        from .report import measured_vs_predicted_gantt
        gantt = gantt_path(cfg.run_dir, opts.gantt)
        measured_vs_predicted_gantt(cfg, sched, sc, gantt)
        say(f"gantt: {shown(gantt)}")
    return result.exit_code


def check_options(opts: RunOptions) -> None:
    """One clear error for an option no run can use, before anything is built or written."""
    positive = {"--iterations": opts.iterations, "--time-scale": opts.time_scale, "--timeout": opts.timeout,
                "--peer-timeout": opts.peer_timeout, "--plan-time-limit": opts.plan_time_limit}
    for name, value in positive.items():
        if value is not None and not value > 0:  # 0 is refused too: it never means "the default"
            raise SkipPipeError(f"{name} must be positive, got {value:g}")
    if opts.mb < 0:
        raise SkipPipeError(f"MB (samples per microbatch) must be positive, or 0 for the scenario's; "
                            f"got {opts.mb}")
    if not opts.peers and not 0 < opts.base_port <= PORT_MAX:
        raise SkipPipeError(f"--base-port must be in 1..{PORT_MAX}, got {opts.base_port}")
    if opts.gantt and Path(opts.gantt).is_absolute():
        writable_output(opts.gantt, "--gantt")
    can_create(opts.runs, f"--runs {opts.runs}")


def gantt_path(run_dir: str | Path, gantt: str) -> Path:
    """Where the run's Gantt chart goes: a bare or relative name lands in the run directory."""
    return Path(run_dir) / gantt if not Path(gantt).is_absolute() else Path(gantt)


def rejoin(opts: RunOptions, say=print) -> int:
    """Restart nodes first..last-1 into the running training of `opts.rejoin`."""
    cfg = load_config(Path(opts.rejoin) / "config.json")
    sc = load_scenario(cfg.scenario_path, cfg.scenario_overrides)
    return launch.rejoin(cfg, check_range(opts.first, opts.last, sc),
                         opts.timeout or TIMEOUT_SLACK_S + cfg.connect_timeout_s, say)


def _config(opts: RunOptions, sc: Scenario, sched_path: Path, variant: VariantSchedule,
            data_nodes: tuple[int, ...], peers: Peers, nodes: range, failures: tuple, auth: RunAuth) -> RunConfig:
    run_dir = new_run_dir(opts.setting, opts.runs)
    # nodes read the run's own copy: a later re-plan of schedules/ cannot change a running run
    schedule_copy = run_dir / "schedule.json"
    shutil.copyfile(sched_path, schedule_copy)
    return RunConfig(
        run_dir=str(run_dir),
        scenario_path=str(Path(opts.scenario).resolve()),
        scenario_overrides=dict(sc.overrides), schedule_path=str(schedule_copy.resolve()),
        variant=variant.name, iterations=opts.iterations or sc.training.iterations,
        # the run's one time scale from here on; the scenario's value is only the default
        time_scale=sc.training.time_scale if opts.time_scale is None else opts.time_scale,
        emulate_compute=not opts.no_emulate_compute, emulate_links=not opts.no_emulate_links,
        peers=peers, local_nodes=tuple(nodes), data_nodes=data_nodes,
        epoch=time.time(), seed=sc.training.seed if opts.seed is None else opts.seed,
        peer_timeout_s=opts.peer_timeout, connect_timeout_s=CONNECT_TIMEOUT_S,
        save_checkpoint=opts.checkpoint, failures=failures,
        dump_gradients=opts.dump_gradients, stand_in_model=opts.stand_in_model,
        run_key=auth.key.hex())


def _peers(opts: RunOptions, n_nodes: int) -> Peers:
    if opts.peers:
        return load_peers(opts.peers, n_nodes)
    if opts.base_port + n_nodes - 1 > PORT_MAX:
        raise SkipPipeError(f"--base-port {opts.base_port}: node {n_nodes - 1} would listen on port "
                            f"{opts.base_port + n_nodes - 1}, above {PORT_MAX}")
    return local_peers(range(n_nodes), opts.host, opts.base_port)


def _prepare_data(sc: Scenario, stand_in_model: str, say) -> None:
    """Build the corpus and tokenizer caches once, before the data nodes all want them."""
    from ..train.data import prepare_data
    from .compute import stand_in
    vocab = stand_in(sc.model, stand_in_model).vocab_size
    say(f"preparing the built-in corpus and a {vocab}-token tokenizer (cached after the first run)")
    prepare_data(None, vocab)


def scenario_for(settings: str, samples_per_microbatch: int | None) -> Scenario:
    sc = load_scenario(settings)
    if samples_per_microbatch and samples_per_microbatch != sc.pipeline.samples_per_microbatch:
        sc = load_scenario(settings, {"pipeline.samples_per_microbatch": samples_per_microbatch})
    return sc


def ensure_schedule(sc: Scenario, variant: str, path: str | None, plan_time_limit_s: float,
                    say=print) -> Path:
    """The schedule for this scenario: the given file, the cached one, or a freshly built one."""
    if path:
        load_schedule(path, sc)
        return Path(path)
    suffix = "" if not sc.overrides else f"-mb{sc.pipeline.samples_per_microbatch}"
    cached = Path("schedules") / f"{sc.name}{suffix}.json"
    if cached.is_file():
        try:
            sched, _ = load_schedule(cached, sc)
            if variant in sched.variants and "baseline" in sched.variants:
                return cached
        except ScheduleError as e:
            say(f"re-planning: {e}")
    say(f"building schedule {cached} (ca-partial time limit {plan_time_limit_s:g} s)")
    sched = build_schedule(sc, PlanOptions(time_limit_s=plan_time_limit_s), progress=say)
    save_schedule(sched, cached)
    return cached


def check_range(first: int, last: int, sc: Scenario) -> range:
    n = len(sc.nodes)
    if not 0 <= first < last <= n:
        raise SkipPipeError(f"node range {first}..{last - 1} is outside the scenario's nodes 0..{n - 1}")
    return range(first, last)
