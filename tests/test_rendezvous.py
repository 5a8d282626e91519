"""Rendezvous (runtime/launch/rendezvous.py) and the torchrun / SLURM node form (runtime/launch/ranked.py):
hosts meet at one address, only holders of the run key can place a node, a node id is claimed
once, hosts must agree on the run; bad input is one line. The swarm test starts six nodes under
torchrun itself."""

import concurrent.futures
import json
import socket

import pytest

from conftest import ROOT, SETTINGS
from runtime_util import finish, run_skippipe, run_torchrun, start_skippipe
from skippipe.errors import SkipPipeError
from skippipe.runtime.launch import keystore
from skippipe.runtime.launch.keystore import StoreClient, StoreError
from skippipe.runtime.launch.ranked import rank_from_environment
from skippipe.runtime.launch.rendezvous import SCHEDULE, Rendezvous, RendezvousError, parse_endpoint
from skippipe.runtime.net.auth import RunAuth
from skippipe.timeline import read_jsonl
from skippipe.util.ports import free_port

AUTH = RunAuth(bytes(range(32)))
SETUP = {"variant": "ca-partial", "iterations": 2}
SHORT_S = 5.0  # deadline of the tests that expect a failure


def _endpoint():
    return ("127.0.0.1", free_port())


def _register_all(endpoint, claims, timeout_s=30.0, auth=AUTH, setups=None):
    """Each claim {node: (host, port)} registers from its own thread (registration blocks until
    every node is in); returns each claimant's table or its error."""
    n = len({node for c in claims for node in c})
    first = Rendezvous(endpoint, auth, n, timeout_s)  # serves the store for the others
    others = [Rendezvous(endpoint, auth, n, timeout_s) for _ in claims[1:]]
    with concurrent.futures.ThreadPoolExecutor(len(claims)) as pool:
        futures = [
            pool.submit(r.register, c, (setups or [SETUP] * len(claims))[i])
            for i, (r, c) in enumerate(zip([first, *others], claims))
        ]
        results = [f.exception() or f.result() for f in futures]
    assert first.serves and not any(o.serves for o in others)
    for r in [first, *others]:
        r.close()
    return results


def test_hosts_learn_every_address():
    table = {0: ("10.0.0.1", 29500), 1: ("10.0.0.1", 29501), 2: ("10.0.0.2", 29500), 3: ("10.0.0.3", 29500)}
    results = _register_all(_endpoint(), [{0: table[0], 1: table[1]}, {2: table[2]}, {3: table[3]}])
    assert results == [table] * 3


def test_node_0_publishes_the_schedule_for_the_others():
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 2, SHORT_S) as host0, Rendezvous(endpoint, AUTH, 2, SHORT_S) as other:
        host0.publish(SCHEDULE, b'{"schema_version": 2}')
        assert other.fetch(SCHEDULE, SHORT_S) == b'{"schema_version": 2}'


def test_a_node_claimed_twice_is_refused():
    results = _register_all(
        _endpoint(), [{0: ("10.0.0.1", 1), 1: ("10.0.0.1", 2)}, {1: ("10.0.0.2", 1)}], timeout_s=SHORT_S
    )
    errors = [str(r) for r in results if isinstance(r, RendezvousError)]
    assert len(errors) == 1 and "node 1 is claimed twice" in errors[0], results
    winner = next(r for r in results if isinstance(r, dict))  # whoever claimed node 1 first
    assert f"{winner[1][0]}:{winner[1][1]} holds it" in errors[0]


def test_hosts_with_another_setup_are_refused():
    other = {**SETUP, "iterations": 3}
    results = _register_all(_endpoint(), [{0: ("10.0.0.1", 1)}, {1: ("10.0.0.2", 1)}], setups=[SETUP, other])
    assert all(isinstance(r, RendezvousError) and "runs iterations" in str(r) for r in results)


def test_an_entry_without_the_key_is_refused():
    """A value not signed with the run's key (TCPStore under torchrun takes anyone's) is refused."""
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 2, SHORT_S) as rdv:
        forger = StoreClient(endpoint, AUTH, SHORT_S)  # our own store admits key holders only
        entry = json.dumps({"node": 1, "host": "6.6.6.6", "port": 1, "by": "x", "setup": SETUP})
        forger.set(rdv.prefix + "node/1", ("0" * 64 + " " + entry).encode())
        with pytest.raises(
            RendezvousError, match="node 1's entry is not signed with this run's key: the run keys differ"
        ):
            rdv.register({0: ("10.0.0.1", 1)}, SETUP)
        forger.set(rdv.prefix + SCHEDULE, b"not signed")
        with pytest.raises(RendezvousError, match="the schedule is not signed"):
            rdv.fetch(SCHEDULE, SHORT_S)
        forger.close()


def _flood(endpoint, size: int) -> None:
    """One connection that sends `size` zero bytes (no HELLO of any run) as far as it is read."""
    with socket.create_connection(endpoint, timeout=SHORT_S) as s:
        try:
            s.sendall(b"\0" * size)
            assert s.recv(1) == b""  # closed without an answer
        except ConnectionResetError:
            pass  # closed on unread bytes


def test_a_stranger_can_make_the_store_hold_nothing():
    """Without the key a client gets its HELLO read and is closed: 20 x 7 MiB sent, none kept."""
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 2, SHORT_S) as rdv:
        for _ in range(20):
            _flood(endpoint, 7 * 1024**2)
        assert rdv.server.data == {} and rdv.server.size == 0
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # and the run still meets
            a = pool.submit(rdv.register, {0: ("10.0.0.1", 1)}, SETUP)
            with Rendezvous(endpoint, AUTH, 2, SHORT_S) as other:
                assert other.register({1: ("10.0.0.1", 2)}, SETUP) == a.result()


def test_a_key_holder_is_bounded_too(monkeypatch):
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 2, SHORT_S) as rdv:
        client = StoreClient(endpoint, AUTH, SHORT_S)
        for i in range(rdv.server.max_keys):
            client.set(f"k{i}", b"x")
        with pytest.raises(StoreError, match=f"holds its {rdv.server.max_keys} keys already"):
            client.set("one-more", b"x")
        client.set("k0", b"replacing a value is fine")
        monkeypatch.setattr(keystore, "MAX_STORE_BYTES", 1000)
        with pytest.raises(StoreError, match="holds 1000 bytes already"):
            client.set("k1", b"y" * 1000)
        client.close()


def test_the_store_is_served_only_until_every_node_is_done():
    endpoint = _endpoint()
    first, other = Rendezvous(endpoint, AUTH, 2, SHORT_S), Rendezvous(endpoint, AUTH, 2, SHORT_S)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        tables = list(
            pool.map(
                lambda r, c: r.register(c, SETUP),
                [first, other],
                [{0: ("10.0.0.1", 1)}, {1: ("10.0.0.2", 1)}],
            )
        )
        assert tables[0] == tables[1]
        first.publish(SCHEDULE, b"{}")
        serving = pool.submit(first.finish, [0])  # waits for node 1
        assert other.fetch(SCHEDULE, SHORT_S) == b"{}"
        with socket.create_connection(endpoint, timeout=SHORT_S):
            pass  # node 1 is not done yet: still served
        other.finish([1])
        serving.result(timeout=SHORT_S)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(endpoint, timeout=SHORT_S)


def test_another_key_never_meets_this_run_and_both_sides_say_the_keys_differ():
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 2, 2.0) as mine:
        with pytest.raises(RendezvousError, match="the run keys differ"):
            Rendezvous(endpoint, RunAuth(bytes(32)), 2, 2.0)
        with pytest.raises(RendezvousError, match="still missing node/1 .* the run keys differ"):
            mine.register({0: ("10.0.0.1", 1)}, SETUP)


def test_a_host_with_another_key_stops_with_one_line(tmp_path):
    endpoint = _endpoint()
    with Rendezvous(endpoint, AUTH, 6, SHORT_S):
        r = run_skippipe(
            [
                "run",
                "3",
                "6",
                "ca-partial",
                "0",
                "--rendezvous",
                f"{endpoint[0]}:{endpoint[1]}",
                "--runs",
                str(tmp_path / "runs"),
            ],
            cwd=ROOT,
            timeout_s=60,
            env={"SKIPPIPE_RUN_KEY": "ab" * 32},
        )
    assert r.returncode == 2 and r.stdout.count("\n") == 1, r.stdout
    assert r.stdout.startswith(f"error: rendezvous {endpoint[0]}:{endpoint[1]}: the run keys differ")


def test_an_unreachable_store_is_one_error_at_the_deadline():
    with pytest.raises(RendezvousError, match=r"rendezvous 192\.0\.2\.1:29400: unreachable within 1 s"):
        Rendezvous(("192.0.2.1", 29400), AUTH, 2, 1.0)


@pytest.mark.parametrize("text", ["nohost", "host:", ":29400", "host:70000", "host:port"])
def test_a_malformed_endpoint_is_one_error(text):
    with pytest.raises(RendezvousError, match=f"--rendezvous '{text}': not HOST:PORT"):
        parse_endpoint(text)


def test_ranks_come_from_torchrun_or_slurm():
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "6",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
    }
    r = rank_from_environment(torchrun)
    assert (r.rank, r.world, r.rendezvous, r.scope) == (3, 6, "h0:29400", "restart-1")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "MASTER_ADDR": "h0", "MASTER_PORT": "29400"}
    assert rank_from_environment(slurm).rank == 5
    assert rank_from_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "6"}, "h1:1").rendezvous == "h1:1"


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "no rank in the environment"),
        ({"RANK": "6", "WORLD_SIZE": "6", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=6 is outside 0..5"),
        ({"RANK": "x", "WORLD_SIZE": "6"}, "not whole numbers"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "6"}, "MASTER_ADDR/MASTER_PORT are not"),
    ],
)
def test_a_missing_or_bad_rank_is_one_error(env, message):
    with pytest.raises(SkipPipeError, match=message):
        rank_from_environment(env)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (
            ["run", "0", "3", "ca-partial", "0", "--rendezvous", "nohost"],
            {},
            "error: --rendezvous 'nohost': not HOST:PORT",
        ),
        (
            ["run", "0", "3", "ca-partial", "0", "--rendezvous", "127.0.0.1:1", "--peers", "p.json"],
            {},
            "error: give --peers (a static table) or --rendezvous, not both",
        ),
        (
            ["run", "0", "3", "ca-partial", "0", "--rendezvous", "127.0.0.1:1"],
            {"SKIPPIPE_RUN_KEY": ""},
            "error: --rendezvous needs the run's key on every host",
        ),
        (
            [
                "run",
                "0",
                "3",
                "ca-partial",
                "0",
                "--rendezvous",
                "192.0.2.1:29400",
                "--rendezvous-timeout",
                "1",
            ],
            {"SKIPPIPE_RUN_KEY": "ab" * 32},
            "error: rendezvous 192.0.2.1:29400: unreachable within 1 s",
        ),
        (
            ["node", "settings/tiny.toml", "--variant", "ca-partial"],
            {"RANK": "", "SLURM_PROCID": ""},
            "error: no rank in the environment",
        ),
        (
            ["node", "settings/tiny.toml", "--variant", "ca-partial"],
            {
                "RANK": "0",
                "WORLD_SIZE": "4",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1",
                "SKIPPIPE_RUN_KEY": "ab" * 32,
            },
            "error: world size 4, but settings/tiny.toml has 6 nodes",
        ),
    ],
)
def test_bad_multi_host_input_is_one_line(tmp_path, args, env, message):
    r = run_skippipe(
        args + (["--runs", str(tmp_path / "runs")] if args[0] == "run" else []),
        cwd=ROOT,
        timeout_s=60,
        env=env,
    )
    assert r.returncode == 2, r.stdout
    assert r.stdout.strip().splitlines() == [r.stdout.strip().splitlines()[0]]
    assert r.stdout.startswith(message), r.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.swarm
def test_six_nodes_under_torchrun(tmp_path, tiny_schedule):
    """torchrun serves the store itself; each node joins it with its RANK and trains."""
    node_args = [str(SETTINGS / "tiny.toml"), "--variant", "ca-partial", "--schedule", str(tiny_schedule)]
    r = run_torchrun(tmp_path, [*node_args, "--iterations", "1"], 240)
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("all 6 nodes registered") == 6
    ends = [
        e
        for d in (tmp_path / "runs").iterdir()
        for e in read_jsonl(d / "events")
        if e["event"] == "iteration_end"
    ]
    assert sorted(e["node"] for e in ends) == list(range(6))


@pytest.mark.swarm
def test_static_peers_still_join_two_launchers(tmp_path, tiny_schedule):
    """`--peers` (no rendezvous): two launchers, one table, one key."""
    from skippipe.util.ports import free_port_range

    base = free_port_range(6)
    (tmp_path / "peers.json").write_text(json.dumps({n: f"127.0.0.1:{base + n}" for n in range(6)}))
    env = {"SKIPPIPE_RUN_KEY": "ef" * 32}
    launchers = [
        start_skippipe(
            [
                "run",
                first,
                last,
                "ca-partial",
                "0",
                "--scenario",
                str(SETTINGS / "tiny.toml"),
                "--schedule",
                str(tiny_schedule),
                "--peers",
                "peers.json",
                "--iterations",
                "1",
                "--runs",
                str(tmp_path / "runs"),
            ],
            cwd=tmp_path,
            env=env,
        )
        for first, last in (("0", "3"), ("3", "6"))
    ]
    for proc in launchers:
        r = finish(proc, 240)
        assert r.returncode == 0, r.stdout
    ends = [
        e
        for d in (tmp_path / "runs").iterdir()
        for e in read_jsonl(d / "events")
        if e["event"] == "iteration_end"
    ]
    assert sorted(e["node"] for e in ends) == list(range(6))


@pytest.fixture
def agent_store(monkeypatch):
    """A TCPStore served as torchrun's agent serves it (to anyone, for the whole run)."""
    from torch.distributed import TCPStore

    port = free_port()
    store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    yield ("127.0.0.1", port), store
    del store


def test_under_torchrun_its_store_holds_only_our_stores_signed_address(agent_store):
    """The nodes meet in our keyed, bounded store; torchrun's holds one signed address, and our
    store stops serving once every node is done."""
    endpoint, store = agent_store
    claims = [{0: ("10.0.0.1", 1)}, {1: ("10.0.0.2", 2)}]
    first, second = (Rendezvous(endpoint, AUTH, 2, SHORT_S) for _ in claims)
    assert first.serves and not second.serves
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        tables = list(pool.map(lambda rc: rc[0].register(rc[1], SETUP), zip((first, second), claims)))
        list(pool.map(lambda rc: rc[0].finish(rc[1]), zip((first, second), claims)))
    assert tables[0] == tables[1] == {0: ("10.0.0.1", 1), 1: ("10.0.0.2", 2)}
    assert store.check(["skippipe//store"]) and not store.check([first.prefix + "node/0"])
    ours = parse_endpoint(store.get("skippipe//store").decode().partition(" ")[2])
    assert ours != endpoint
    with pytest.raises(OSError):  # no longer served
        socket.create_connection(ours, timeout=SHORT_S).close()


def test_under_torchrun_another_key_or_a_forged_address_is_one_line(agent_store):
    endpoint, store = agent_store
    with Rendezvous(endpoint, AUTH, 2, SHORT_S):
        with pytest.raises(RendezvousError, match="not signed with this run's key: the run keys differ"):
            Rendezvous(endpoint, RunAuth(bytes(32)), 2, SHORT_S)
    store.set("skippipe/other/store", "0" * 64 + " 127.0.0.1:1")  # written by a stranger
    with pytest.raises(RendezvousError, match="the run keys differ, or a process without the key"):
        Rendezvous(endpoint, AUTH, 2, SHORT_S, scope="other")
