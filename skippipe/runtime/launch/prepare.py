"""What `./run.sh FIRST LAST SETTING MB` does before and around the launcher: from the run
command's options to a RunConfig (scenario, schedule, data caches, peers, free ports, run
directory), then the launched run and its summary; and `--rejoin` into a running training.
With `--rendezvous` the hosts learn each other's addresses and node 0's schedule through one
address (rendezvous.py); `prepared` is shared with a node started by torchrun or SLURM (ranked.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import SkipPipeError
from ...plan_options import PlanOptions
from ...planning import build_schedule
from ...scenario import Scenario, load_scenario
from ...schedule import Schedule, ScheduleError, VariantSchedule
from ...schedule_file import load_schedule, save_schedule
from ...util.peers import PORT_MAX, Peers, load_peers, local_peers
from ...util.ports import LOOPBACK, reserve_free_ports, reserve_ports
from ...util.rundir import can_create, new_run_dir, shown, writable_output
from ...variants import REFERENCE
from ..net.auth import RunAuth
from ..node.emulation import Emulation
from ..node.runconfig import RunConfig, load_config
from . import supervisor
from .rendezvous import DEFAULT_TIMEOUT_S, SCHEDULE, Rendezvous, parse_endpoint, reachable_address

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
    host: str | None  # None: loopback, or with a rendezvous this host's address on the route to it
    base_port: int  # 0 (with a rendezvous only): a free port per node
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
    fail: Sequence[str] = ()  # failure specs (failures.py)
    checkpoint: bool = False
    stand_in_model: str = ""
    gantt: str | None = None
    timeout: float | None = None
    rejoin: str | None = None
    dump_gradients: bool = False
    run_key_file: str | None = None  # multi-host: the run's shared key (else $SKIPPIPE_RUN_KEY, else new)
    rendezvous: str | None = None  # multi-host: HOST:PORT of the address book
    rendezvous_timeout: float = DEFAULT_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run ready to start: its config (written nowhere yet), schedule and prediction."""

    cfg: RunConfig
    sched: Schedule
    sc: Scenario
    nodes: range
    predicted_s: float


def run_command(opts: RunOptions, say=print) -> int:
    """Train (or rejoin) as the options say; the exit code."""
    if opts.rejoin:
        return rejoin(opts, say)
    return train(opts, say)


def train(opts: RunOptions, say=print) -> int:
    """Start this host's nodes, follow them to the end, print the summary (and a Gantt chart)."""
    with prepared(opts, say) as run:
        cfg = run.cfg
        timeout = opts.timeout or (
            TIMEOUT_SLACK_S
            + TIMEOUT_FACTOR * cfg.iterations * Emulation.from_config(cfg).wall_s(run.predicted_s)
        )
        say(
            f"run {shown(cfg.run_dir)}: nodes {run.nodes.start}..{run.nodes.stop - 1} of {run.sc.name} "
            f"({len(run.sc.nodes)} nodes), {opts.setting}, {cfg.iterations} iterations, "
            f"{run.sc.pipeline.samples_per_microbatch} samples per microbatch, time scale {cfg.time_scale:g}"
        )
        result = supervisor.run(cfg, run.nodes, run.predicted_s, timeout, say)
    say(supervisor.summary(result.iterations, cfg))
    from .report import averaging_lines

    for line in averaging_lines(cfg, run.sc):
        say(line)
    if opts.gantt and result.iterations:
        from .report import measured_vs_predicted_gantt

        gantt = gantt_path(cfg.run_dir, opts.gantt)
        measured_vs_predicted_gantt(cfg, run.sched, run.sc, gantt)
        say(f"gantt: {shown(gantt)}")
    return result.exit_code


@contextlib.contextmanager
def prepared(opts: RunOptions, say=print, run_name: str | None = None, scope: str = "") -> Iterator[Prepared]:
    """Check the options, learn the peers, reserve this host's ports (held until the context
    ends: a second run on them stops here, before it plans), get the schedule, make the run
    directory and config. A rendezvous store this process serves lives until every node has
    the table and the schedule; `scope` keeps registrations apart in a store that outlives a
    run (torchrun's, rendezvous.py)."""
    from ...failures import parse_failures
    from ...sim.simulate import simulate

    check_options(opts)
    auth = _auth(opts)  # a bad key fails before anything is made
    sc = scenario_for(opts.scenario, opts.mb or None)
    nodes = check_range(opts.first, opts.last, sc)
    failures = tuple(parse_failures(list(opts.fail), sc))
    wide = _run_wide(opts, sc)
    with contextlib.ExitStack() as held:
        rdv = None
        if opts.rendezvous:
            rdv = held.enter_context(
                Rendezvous(
                    parse_endpoint(opts.rendezvous), auth, len(sc.nodes), opts.rendezvous_timeout, scope
                )
            )
        peers = _peers(opts, len(sc.nodes), nodes, rdv, held)
        if rdv is not None:
            peers = _register(rdv, peers, wide, say)
        sched_path = _schedule(
            opts, sc, nodes, rdv, Path(held.enter_context(tempfile.TemporaryDirectory())), say
        )
        if rdv is not None:  # the store is needed no longer: it is not served during the run
            rdv.finish(nodes)
        sched, _ = load_schedule(sched_path, sc)
        variant = sched.variant(opts.setting)
        predicted = (
            variant.predicted["iteration_s"]
            if variant.routing  # online: mean over seeds
            else simulate(sched, opts.setting, sc).iteration_s
        )
        _prepare_data(sc, opts.stand_in_model, say)
        cfg = _config(
            opts,
            sc,
            wide,
            sched_path,
            variant,
            sched.allocation_of(opts.setting)[0],
            peers,
            nodes,
            failures,
            auth,
            run_name or opts.setting,
        )
        yield Prepared(cfg, sched, sc, nodes, predicted)


def check_options(opts: RunOptions) -> None:
    """One clear error for an option no run can use, before anything is built or written."""
    positive = {
        "--iterations": opts.iterations,
        "--time-scale": opts.time_scale,
        "--timeout": opts.timeout,
        "--peer-timeout": opts.peer_timeout,
        "--plan-time-limit": opts.plan_time_limit,
        "--rendezvous-timeout": opts.rendezvous_timeout,
    }
    for name, value in positive.items():
        if value is not None and not 0 < value < math.inf:  # 0 never means "the default"
            raise SkipPipeError(f"{name} must be positive and finite, got {value:g}")
    if opts.mb < 0:
        raise SkipPipeError(
            f"MB (samples per microbatch) must be positive, or 0 for the scenario's; got {opts.mb}"
        )
    if opts.rendezvous:
        parse_endpoint(opts.rendezvous)
        if opts.peers:
            raise SkipPipeError("give --peers (a static table) or --rendezvous, not both")
    lowest = 0 if opts.rendezvous else 1  # 0: free ports, which only a rendezvous can tell the others
    if not opts.peers and not lowest <= opts.base_port <= PORT_MAX:
        raise SkipPipeError(f"--base-port must be in {lowest}..{PORT_MAX}, got {opts.base_port}")
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
    return supervisor.rejoin(
        cfg,
        check_range(opts.first, opts.last, sc),
        opts.timeout or TIMEOUT_SLACK_S + cfg.connect_timeout_s,
        say,
    )


def _config(
    opts: RunOptions,
    sc: Scenario,
    wide: dict,
    sched_path: Path,
    variant: VariantSchedule,
    data_nodes: tuple[int, ...],
    peers: Peers,
    nodes: range,
    failures: tuple,
    auth: RunAuth,
    run_name: str,
) -> RunConfig:
    run_dir = new_run_dir(run_name, opts.runs)
    # nodes read the run's own copy: a later re-plan of schedules/ cannot change a running run
    schedule_copy = run_dir / "schedule.json"
    shutil.copyfile(sched_path, schedule_copy)
    return RunConfig(
        run_dir=str(run_dir),
        scenario_path=str(Path(opts.scenario).resolve()),
        scenario_overrides=dict(sc.overrides),
        schedule_path=str(schedule_copy.resolve()),
        variant=variant.name,
        iterations=wide["iterations"],
        time_scale=wide["time_scale"],
        emulate_compute=wide["emulate_compute"],
        emulate_links=wide["emulate_links"],
        peers=peers,
        local_nodes=tuple(nodes),
        data_nodes=data_nodes,
        epoch=time.time(),
        seed=wide["seed"],
        peer_timeout_s=opts.peer_timeout,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        save_checkpoint=opts.checkpoint,
        failures=failures,
        dump_gradients=opts.dump_gradients,
        stand_in_model=opts.stand_in_model,
        run_key=auth.key.hex(),
    )


def _run_wide(opts: RunOptions, sc: Scenario) -> dict:
    """The settings every node of a run shares, as JSON (a rendezvous compares them across
    hosts): the scenario, the variant and the options that change what or how nodes train."""
    return {
        "scenario": sc.content_hash,
        "training": dataclasses.asdict(sc.training),
        "samples_per_microbatch": sc.pipeline.samples_per_microbatch,
        "variant": opts.setting,
        "iterations": opts.iterations or sc.training.iterations,
        # the run's one time scale from here on; the scenario's value is only the default
        "time_scale": sc.training.time_scale if opts.time_scale is None else opts.time_scale,
        "seed": sc.training.seed if opts.seed is None else opts.seed,
        "emulate_compute": not opts.no_emulate_compute,
        "emulate_links": not opts.no_emulate_links,
        "peer_timeout_s": opts.peer_timeout,
        "stand_in_model": opts.stand_in_model,
    }


def _auth(opts: RunOptions) -> RunAuth:
    """The run key; hosts that meet at a rendezvous must all be given the same one."""
    auth = RunAuth.load(opts.run_key_file, fresh=not opts.rendezvous)
    if auth is None:
        raise SkipPipeError(
            "--rendezvous needs the run's key on every host: --run-key-file PATH "
            "or SKIPPIPE_RUN_KEY (64 hex digits, the same everywhere)"
        )
    return auth


def _peers(
    opts: RunOptions, n_nodes: int, nodes: range, rdv: Rendezvous | None, held: contextlib.ExitStack
) -> Peers:
    """Every node's address (static), or with a rendezvous this host's nodes' only; this host's
    ports reserved for the run (until `held` closes)."""
    if opts.peers:
        peers = load_peers(opts.peers, n_nodes)
    elif rdv is None:
        peers = _numbered(range(n_nodes), opts.host or LOOPBACK, opts.base_port)
    else:
        host = opts.host or reachable_address(rdv.endpoint)
        if not opts.base_port:  # chosen under their locks: another run's chosen ports are passed over
            return held.enter_context(reserve_free_ports(host, nodes))
        peers = _numbered(nodes, host, opts.base_port)
    held.enter_context(reserve_ports(peers, nodes))
    return peers


def _numbered(nodes: range, host: str, base_port: int) -> Peers:
    """Node i on host:base_port+i, all of them below PORT_MAX."""
    if base_port + nodes.stop - 1 > PORT_MAX:
        raise SkipPipeError(
            f"--base-port {base_port}: node {nodes.stop - 1} would listen on port "
            f"{base_port + nodes.stop - 1}, above {PORT_MAX}"
        )
    return local_peers(nodes, host, base_port)


def _register(rdv: Rendezvous, mine: Peers, setup: dict, say) -> Peers:
    """This host's nodes into the address book; the whole table once every node is in."""
    say(
        f"{rdv.where}{' (served here)' if rdv.serves else ''}: registering node(s) "
        f"{', '.join(f'{n} at {h}:{p}' for n, (h, p) in sorted(mine.items()))}; waiting for the others"
    )
    peers = rdv.register(mine, setup)
    say(
        f"{rdv.where}: all {len(peers)} nodes registered, on {len({h for h, _ in peers.values()})} address(es)"
    )
    return peers


def _schedule(
    opts: RunOptions, sc: Scenario, nodes: range, rdv: Rendezvous | None, scratch: Path, say
) -> Path:
    """The schedule file to run: this host's (given, cached or planned; node 0's host publishes
    it at a rendezvous), or the one node 0's host published."""
    if rdv is None or 0 in nodes:
        path = ensure_schedule(sc, opts.setting, opts.schedule, opts.plan_time_limit, say)
        if rdv is not None:
            rdv.publish(SCHEDULE, path.read_bytes())
        return path
    # node 0's host may still be planning
    data = rdv.fetch(SCHEDULE, opts.rendezvous_timeout + opts.plan_time_limit)
    if opts.schedule and Path(opts.schedule).read_bytes() != data:
        raise SkipPipeError(
            f"--schedule {opts.schedule} differs from the schedule node 0's host runs; "
            f"give every host the same file (or none)"
        )
    path = scratch / "schedule.json"
    path.write_bytes(data)
    say(f"{rdv.where}: running node 0's host's schedule")
    return path


def _prepare_data(sc: Scenario, stand_in_model: str, say) -> None:
    """Build the corpus and tokenizer caches once, before the data nodes all want them."""
    from ...train.data import prepare_data
    from ..node.compute import stand_in

    vocab = stand_in(sc.model, stand_in_model).vocab_size
    say(f"preparing the built-in corpus and a {vocab}-token tokenizer (cached after the first run)")
    prepare_data(None, vocab)


def scenario_for(settings: str, samples_per_microbatch: int | None) -> Scenario:
    sc = load_scenario(settings)
    if samples_per_microbatch and samples_per_microbatch != sc.pipeline.samples_per_microbatch:
        sc = load_scenario(settings, {"pipeline.samples_per_microbatch": samples_per_microbatch})
    return sc


def ensure_schedule(
    sc: Scenario, variant: str, path: str | None, plan_time_limit_s: float, say=print
) -> Path:
    """The schedule for this scenario: the given file, the cached one, or a freshly built one."""
    if path:
        load_schedule(path, sc)
        return Path(path)
    suffix = "" if not sc.overrides else f"-mb{sc.pipeline.samples_per_microbatch}"
    cached = Path("schedules") / f"{sc.name}{suffix}.json"
    if cached.is_file():
        try:
            sched, _ = load_schedule(cached, sc)
            if variant in sched.variants and REFERENCE in sched.variants:
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
