"""Deployment across hospitals on Flower's Deployment Engine, with real processes on 127.0.0.1.

One SuperLink (TLS, node authentication, state in SQLite) and one SuperNode per site (three
synthetic sites, exported to files by `deploy prepare`: each node reads only its own file, the
server only the pool files). One deployed run goes through three faults, and the tests below check
one fault each:

    stage 1   site C sends a poisoned update (weights x 1e6): rejected before distillation
    then      the server (SuperLink, SuperExec, ServerApp) is SIGKILLed and restarted on the same
    state;
              `flwr run` with the same run directory resumes after stage 1
    stage 2   site B's SuperNode is SIGKILLed during local training: the stage completes with A and
    C
              (runtime.min_sites = 2), the log names B, and the evaluation goes on without it

The reference is the same federation run uninterrupted in one process (the same ServerApp flow and
ClientApp code through tests/loopback.py), where C's stage-1 training fails and B fails from stage 2
on: a poisoned update must leave the global model exactly as if C had sent nothing.
"""

from dataclasses import dataclass, field
import json
from pathlib import Path
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib

from flwr.app import Context, RecordDict
import pytest
import tomli_w
import torch

from conftest import ROOT, TINY
from loopback import LoopbackGrid
from meduniverse.core.config_file import load_config
from meduniverse.core.errors import ConfigError, DataError, StageError
from meduniverse.core.files import read_json, read_tensors
from meduniverse.deploy.apps import serve
from meduniverse.deploy.credentials import generate_credentials
from meduniverse.deploy.environment import flower_env
from meduniverse.deploy.flower import (
    list_nodes,
    register_sites,
    supernode_argv,
    wait_for_nodes,
    write_connection,
)
from meduniverse.deploy.network import check_superlink
from meduniverse.deploy.prepare import prepare
from meduniverse.deploy.processes import spawn, stop
from meduniverse.deploy.runs import run_status, start_run, wait_for_run, write_app
from meduniverse.federation.shared import federation_text, server_config, site_config
from meduniverse.interfaces.cli import demo_config_path
import poison_app

pytestmark = pytest.mark.deployment

SITES = ["synthetic_xray_nodule", "synthetic_fundus_grade", "synthetic_cell_type"]
A, B, C = SITES
SETTINGS = [
    *TINY,
    "model.widths=[8, 16, 32, 64]",
    "method.stages=2",
    "runtime.min_sites=2",
    "runtime.reply_timeout=600",
]  # a killed node is noticed by Flower after <= 60 s (NODE_UNAVAILABLE)
POISON = "poison='huge' poison-stage=1"
TIMEOUT = 900  # per wait; the whole module takes a few minutes on 2 idle cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`meduniverse deploy ...` in its own process (a successful `node` or `superlink` would exec
    Flower)."""
    return subprocess.run(
        [sys.executable, "-m", "meduniverse.deploy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=flower_env(),
        check=False,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


@dataclass
class Workspace:
    root: Path
    credentials: Path  # from `deploy credentials`
    deployment: Path  # from `deploy prepare`
    # the Flower App `flwr run` ships: the product's ServerApp, the test ClientApp (poison_app.py)
    app: Path
    text: str  # the shared federation as the run config carries it


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("deploy")
    raw = tomllib.loads(demo_config_path().read_text())
    raw["sites"] = [s for s in raw["sites"] if s["name"] in SITES]
    raw["pool"]["sites"] = SITES
    (root / "federation-with-data.toml").write_text(tomli_w.dumps(raw))
    config = load_config(root / "federation-with-data.toml", SETTINGS)
    credentials = generate_credentials(root / "credentials", [*SITES, "stranger"])
    deployment = prepare(config, root / "deployment")
    app = write_app(root / "app", clientapp="poison_app:client_app", include=["poison_app.py"])
    shutil.copy(ROOT / "tests" / "poison_app.py", app / "poison_app.py")
    return Workspace(
        root, credentials, deployment, app, federation_text(deployment / "federation.toml")
    )


@dataclass
class Cluster:
    ws: Workspace
    port: int = field(default_factory=free_port)
    link: subprocess.Popen | None = None
    nodes: dict = field(default_factory=dict)
    ids: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self):
        return self.ws.root / "operator"

    def log(self, name: str):
        return self.ws.root / "logs" / f"{name}.log"

    def start_superlink(self) -> None:
        self.link = spawn(
            [
                sys.executable,
                "-m",
                "meduniverse.deploy",
                "superlink",
                "--credentials",
                str(self.ws.credentials / "server"),
                "--state",
                str(self.ws.root / "superlink.db"),
                "--port",
                str(self.port),
            ],
            self.log("superlink"),
            self.ws.root / "superlink-home",
        )
        check_superlink(self.address, self.ws.credentials / "ca.crt", wait=120)

    def start_node(self, site: str, extra: str = "") -> None:
        data = self.ws.deployment / "sites" / f"{site}.npz"
        folder = self.ws.credentials / "sites" / site
        if extra:  # a test-only node config (poison) needs Flower's own command line
            cmd = supernode_argv(folder, site, data, self.address, free_port(), extra)
        else:
            cmd = [
                sys.executable,
                "-m",
                "meduniverse.deploy",
                "node",
                "--site",
                site,
                "--data",
                str(data),
                "--credentials",
                str(folder),
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--flwr-home",
                str(self.ws.root / f"node-{site}"),
            ]
        self.nodes[site] = spawn(cmd, self.log(site), self.ws.root / f"node-{site}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log(name)
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.is_file()
            else ""
        )

    def stop_all(self) -> None:
        for process in self.nodes.values():
            stop(process)
        if self.link is not None:
            stop(self.link)


@pytest.fixture(scope="module")
def cluster(workspace):
    c = Cluster(workspace)
    try:
        c.start_superlink()
        write_connection(c.home, c.address, workspace.credentials / "ca.crt")
        c.ids = register_sites(workspace.credentials, c.home, SITES)  # not "stranger"
        for site in SITES:
            c.start_node(site, POISON if site == C else "")
        wait_for_nodes(c.home, c.ids, timeout=300)
        yield c
    finally:
        c.stop_all()


def wait_until(
    predicate, cluster: Cluster, run_id: int, what: str, timeout: float = TIMEOUT
) -> None:
    """Poll `predicate` every 0.5 s; fail early, with the server's log, if the run ends first."""
    deadline, next_status = time.monotonic() + timeout, time.monotonic() + 20
    while not predicate():
        if time.monotonic() > next_status:
            status = run_status(run_id, cluster.home)
            if str(status.get("status", "")).startswith("finished"):
                pytest.fail(
                    f"run {run_id} {status['status']} before {what}: "
                    f"{status.get('status-details')}\n"
                    f"{cluster.tail('superlink')}"
                )
            next_status = time.monotonic() + 20
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s\n{cluster.tail('superlink')}")
        time.sleep(0.5)


def stage_done(run_dir, stage: int) -> bool:
    path = run_dir / "checkpoints" / "progress.json"
    try:
        return str(stage) in read_json(path)["stages"]
    except (OSError, ValueError, KeyError):
        return False


def log_after(run_dir, marker: str, line: str) -> bool:
    path = run_dir / "log.txt"
    text = path.read_text() if path.is_file() else ""
    return marker in text and line in text.split(marker, 1)[1]


@pytest.fixture(scope="module")
def faulty_run(cluster, workspace) -> dict:
    """The deployed run with its three faults (see the module docstring)."""
    run_dir = workspace.root / "run"
    started = time.perf_counter()
    first = start_run(workspace.text, run_dir, cluster.home, app=workspace.app)
    wait_until(lambda: stage_done(run_dir, 1), cluster, first, "stage 1 checkpoint")
    stage1 = (run_dir / "checkpoints" / "stage_001_model.safetensors").read_bytes()
    stop(cluster.link, signal.SIGKILL)  # the server machine dies: SuperLink, SuperExec, ServerApp
    killed = time.perf_counter()
    cluster.start_superlink()  # the same state file: registered nodes are kept, and they reconnect
    wait_for_nodes(cluster.home, cluster.ids, timeout=300)
    second = start_run(workspace.text, run_dir, cluster.home, app=workspace.app)
    wait_until(
        lambda: log_after(
            run_dir, "resuming after completed stage 1", "universal stage 2: local training"
        ),
        cluster,
        second,
        "stage 2 of the resumed run",
    )
    stop(cluster.nodes[B], signal.SIGKILL)  # site B's machine dies during stage 2
    node_killed = time.perf_counter()
    final = wait_for_run(second, cluster.home, timeout=TIMEOUT, poll=10)
    finished = time.perf_counter()
    return {
        "run_dir": run_dir,
        "status": final,
        "stage1_before_kill": stage1,
        "first": first,
        "second": second,
        "seconds": {
            "to_server_kill": killed - started,
            "restart_to_node_kill": node_killed - killed,
            "node_kill_to_end": finished - node_killed,
            "total": finished - started,
        },
        "log": (run_dir / "log.txt").read_text(),
        "results": read_json(run_dir / "results.json"),
    }


class ProcessLikeGrid(LoopbackGrid):
    """The loopback grid, but the server does not inherit the sites' torch state, as with a process
    per site: its thread count is restored after each site and its global random generator is left
    in an unforeseeable state."""

    def push_messages(self, messages):
        threads = torch.get_num_threads()
        try:
            return super().push_messages(messages)
        finally:
            torch.set_num_threads(threads)
            torch.manual_seed(secrets.randbits(63))


def loopback_run(workspace: Workspace, run_dir, faults: dict[str, dict]) -> None:
    """The deployed apps in one process: serve() and the test ClientApp, each node with its own data
    file only."""
    grid = ProcessLikeGrid(poison_app.client_app, len(SITES))
    for context, site in zip(grid.contexts.values(), SITES, strict=True):
        context.node_config = {
            "site": site,
            "data": str(workspace.deployment / "sites" / f"{site}.npz"),
            **faults.get(site, {}),
        }
        context.run_config = {"federation": workspace.text}
    serve(
        grid,
        Context(
            run_id=1,
            node_id=1,
            node_config={},
            state=RecordDict(),
            run_config={"federation": workspace.text, "run-dir": str(run_dir), "seed": -1},
        ),
    )


@pytest.fixture(scope="module")
def reference(workspace) -> dict:
    run_dir = workspace.root / "reference"
    started = time.perf_counter()
    loopback_run(workspace, run_dir, {C: {"fail-stage": 1}, B: {"fail-from-stage": 2}})
    return {
        "run_dir": run_dir,
        "seconds": time.perf_counter() - started,
        "results": read_json(run_dir / "results.json"),
    }


def max_differences(run_a, run_b) -> dict[str, float]:
    """Largest absolute difference of each stage's weights and of every metric of every site."""
    out = {}
    for stage in (0, 1, 2):
        name = f"checkpoints/stage_{stage:03d}_model.safetensors"
        a, b = read_tensors(run_a / name), read_tensors(run_b / name)
        assert set(a) == set(b)
        out[f"stage {stage} weights"] = max(
            float((a[k].double() - b[k].double()).abs().max()) for k in a
        )
    pa, pb = (
        read_json(run_a / "checkpoints" / "progress.json"),
        read_json(run_b / "checkpoints" / "progress.json"),
    )
    assert set(pa["evaluation"]) == set(pb["evaluation"])
    diffs = [0.0]
    for arm, entry in pa["evaluation"].items():
        assert set(entry["sites"]) == set(pb["evaluation"][arm]["sites"])
        for site, metrics in entry["sites"].items():
            other = pb["evaluation"][arm]["sites"][site]
            diffs += [
                abs(float(metrics[k]) - float(other[k]))
                for k in metrics
                if k.startswith(("val-", "test-"))
            ]
    out["metrics"] = max(diffs)
    return out


# ------------------------------------------------------------------------------------- no processes
# needed


def test_credentials_hold_one_folder_per_machine(workspace, tmp_path):
    creds = workspace.credentials
    assert sorted(p.name for p in (creds / "sites").iterdir()) == sorted([*SITES, "stranger"])
    for site in SITES:
        folder = creds / "sites" / site
        assert sorted(p.name for p in folder.iterdir()) == [
            "ca.crt",
            "node.key",
            "node.pub",
            "tls.key",
            "tls.pem",
        ]
        assert (folder / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        assert (folder / "node.key").stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in (creds / "server").iterdir()) == [
        "ca.crt",
        "nodes",
        "server.key",
        "server.pem",
    ]
    for pem in [creds / "server" / "server.pem", *(creds / "sites" / s / "tls.pem" for s in SITES)]:
        check = subprocess.run(
            ["openssl", "verify", "-CAfile", str(creds / "ca.crt"), str(pem)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    san = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(creds / "server" / "server.pem"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san
    again = cli(
        "credentials", "--out", str(creds), "--site", "x"
    )  # an existing directory is never touched
    assert again.returncode == 1 and "already exists" in one_line(again)
    bad = cli("credentials", "--out", str(tmp_path / "bad"), "--site", "a", "--site", "no/slash")
    assert bad.returncode == 1 and "no/slash" in one_line(bad) and not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary directory left either


def test_no_site_sees_another_sites_path_and_the_server_sees_none(workspace):
    text = workspace.text
    assert "sites/" not in text and ".npz" in text  # only the pool files, on the server machine
    server = server_config(text)
    assert [s.name for s in server.sites] == SITES and all(
        s.path is None and s.synthetic is None for s in server.sites
    )
    assert all(p.is_file() and p.parent == workspace.deployment / "pool" for p in server.pool.files)
    own = workspace.deployment / "sites" / f"{A}.npz"
    node = site_config(text, A, str(own))
    assert (
        [s.name for s in node.sites] == [A] and node.sites[0].path == own and node.pool.files == ()
    )
    with pytest.raises(DataError, match=f"site '{A}': data file .*missing.npz not found"):
        site_config(text, A, str(workspace.root / "missing.npz"))
    with pytest.raises(ConfigError, match="no data file"):
        site_config(text, A, None)
    with pytest.raises(ConfigError, match="'nowhere' is not in"):
        site_config(text, "nowhere", str(own))
    with_path = text.replace(f'name = "{A}"', f'name = "{A}"\npath = "/data/{A}.npz"', 1)
    with pytest.raises(ConfigError, match=f"site '{A}' names its data"):
        server_config(with_path)


@pytest.mark.parametrize("how", ["nan", "inf", "huge"])
def test_each_kind_of_poisoned_update_is_refused(how):
    from meduniverse.method.server import SiteUpdate, update_problem
    from meduniverse.models.universal import build_model, part_of

    config = load_config(demo_config_path(), SETTINGS)
    state = build_model(config).state_dict()
    site = config.sites[0].name
    honest = SiteUpdate(site, {k: v + 0.01 for k, v in part_of(state, site).items()}, 10)
    assert update_problem(honest, state) is None
    problem = update_problem(SiteUpdate(site, poison_app.poison(honest.state, how), 10), state)
    assert problem and (
        "NaN or inf" in problem if how != "huge" else "times the global model's" in problem
    )


def test_a_site_without_its_data_stops_the_run_before_anything_is_written(workspace, tmp_path):
    grid = ProcessLikeGrid(poison_app.client_app, len(SITES))
    for context, site in zip(grid.contexts.values(), SITES, strict=True):
        data = (
            tmp_path / "gone.npz" if site == B else workspace.deployment / "sites" / f"{site}.npz"
        )
        context.node_config, context.run_config = (
            {"site": site, "data": str(data)},
            {"federation": workspace.text},
        )
    run_dir = tmp_path / "run"
    with pytest.raises(
        StageError,
        match=f"handshake: .*site '{B}': data error",  # the path stays at the site
    ):
        serve(
            grid,
            Context(
                run_id=1,
                node_id=1,
                node_config={},
                state=RecordDict(),
                run_config={"federation": workspace.text, "run-dir": str(run_dir), "seed": -1},
            ),
        )
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------- real
# processes


def test_unreachable_server_wrong_certificate_and_missing_data_are_clear_errors(
    workspace, cluster, tmp_path
):
    data, folder = workspace.deployment / "sites" / f"{A}.npz", workspace.credentials / "sites" / A
    node = [
        "node",
        "--site",
        A,
        "--credentials",
        str(folder),
        "--port",
        str(free_port()),
        "--wait",
        "0",
        "--flwr-home",
        str(tmp_path / "home"),
    ]
    dead = f"127.0.0.1:{free_port()}"
    result = cli(*node, "--data", str(data), "--superlink", dead)
    assert result.returncode == 1 and f"cannot reach the SuperLink at {dead}" in one_line(result)
    result = cli(*node, "--data", str(tmp_path / "nope.npz"), "--superlink", cluster.address)
    assert (
        result.returncode == 1
        and f"site '{A}': data file {tmp_path / 'nope.npz'} not found" in one_line(result)
    )
    other = generate_credentials(
        tmp_path / "other-federation", [A]
    )  # a CA the SuperLink's cert is not from
    result = cli(
        *node[:3],
        "--credentials",
        str(other / "sites" / A),
        *node[5:],
        "--data",
        str(data),
        "--superlink",
        cluster.address,
    )
    assert result.returncode == 1 and "does not vouch for" in one_line(result)
    assert str(other / "sites" / A / "ca.crt") in one_line(result)
    run = [
        "run",
        str(workspace.deployment / "federation.toml"),
        "--out",
        str(tmp_path / "run"),
        "--wait-server",
        "0",
        "--flwr-home",
        str(tmp_path / "home"),
    ]
    result = cli(*run, "--superlink", cluster.address, "--ca", str(other / "ca.crt"))
    assert result.returncode == 1 and "does not vouch for" in one_line(result)
    result = cli(*run, "--superlink", dead, "--ca", str(workspace.credentials / "ca.crt"))
    assert result.returncode == 1 and f"cannot reach the SuperLink at {dead}" in one_line(result)
    broken = tmp_path / "federation.toml"
    broken.write_text(
        (workspace.deployment / "federation.toml")
        .read_text()
        .replace('"pool/00-', '"pool/missing-')
    )
    result = cli(
        "run",
        str(broken),
        "--out",
        str(tmp_path / "run"),
        "--superlink",
        cluster.address,
        "--ca",
        str(workspace.credentials / "ca.crt"),
        "--flwr-home",
        str(tmp_path / "home"),
    )
    assert (
        result.returncode == 1
        and "server pool file not found" in one_line(result)
        and "missing-" in one_line(result)
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()
    # the same mistake past the launcher: the ServerApp fails the run at once, naming the file,
    # writing nothing
    run_id = start_run(
        federation_text(broken, check_files=False),
        tmp_path / "run",
        cluster.home,
        app=workspace.app,
    )
    status = wait_for_run(run_id, cluster.home, timeout=300, poll=5)
    assert (
        status["status"] == "finished:failed"
        and "server pool file not found" in status["status-details"]
    )
    assert not (tmp_path / "run").exists()


def test_an_unregistered_node_is_refused(workspace, cluster):
    folder = (
        workspace.credentials / "sites" / "stranger"
    )  # the federation's CA, but a key nobody registered
    cmd = supernode_argv(
        folder, A, workspace.deployment / "sites" / f"{A}.npz", cluster.address, free_port()
    )
    process = spawn(cmd, cluster.log("stranger"), workspace.root / "node-stranger")
    try:
        assert process.wait(timeout=120) != 0
    finally:
        stop(process)
    assert "Failed to activate SuperNode" in cluster.log("stranger").read_text()
    assert len(list_nodes(cluster.home)) == len(SITES)


def test_a_poisoned_update_is_rejected_and_the_global_model_is_unaffected(faulty_run, reference):
    run_dir = faulty_run["run_dir"]
    assert faulty_run["status"]["status"] == "finished:completed", faulty_run["status"]
    record = read_json(run_dir / "checkpoints" / "progress.json")["stages"]["1"]
    assert "reply refused: weights" in record["rejected"][C] and set(record["sites"]) == {
        A,
        B,
    }
    assert f"stage 1: site '{C}' reply refused" in faulty_run["log"]
    state = read_tensors(run_dir / "checkpoints" / "stage_001_model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    ref = read_tensors(reference["run_dir"] / "checkpoints" / "stage_001_model.safetensors")
    worst = max(float((state[k] - ref[k]).abs().max()) for k in state)  # as if C had sent nothing
    assert worst <= 1e-5, worst


def test_a_killed_site_is_dropped_and_the_run_goes_on(faulty_run, cluster):
    run_dir = faulty_run["run_dir"]
    assert faulty_run["status"]["status"] == "finished:completed", faulty_run["status"]
    record = read_json(run_dir / "checkpoints" / "progress.json")["stages"]["2"]
    assert set(record["sites"]) == {A, C} and B in record["rejected"]
    assert (
        f"stage 2: site '{B}' " in faulty_run["log"]
    )  # "failed: Error: Node Unavailable ..." or "no reply"
    assert f"evaluation 'universal': site '{B}'" in faulty_run["log"]
    tasks = faulty_run["results"]["tasks"]
    assert tasks[B]["arms"] == {} and all(
        set(tasks[s]["arms"]) == {"baseline", "universal", "universal_finetuned"} for s in (A, C)
    )
    assert (run_dir / "model" / "model.safetensors").is_file()
    for site in (
        SITES
    ):  # each node answered as the site its key was registered for, and the server checked it
        assert f"{site} = node {cluster.ids[site]} (registered as '{site}')" in faulty_run["log"]


def test_the_server_killed_after_stage_1_resumes_to_the_same_result(faulty_run, reference, capsys):
    run_dir = faulty_run["run_dir"]
    assert faulty_run["status"]["status"] == "finished:completed", faulty_run["status"]
    assert "resuming after completed stage 1" in faulty_run["log"]
    assert (run_dir / "checkpoints" / "stage_001_model.safetensors").read_bytes() == faulty_run[
        "stage1_before_kill"
    ]
    assert (
        faulty_run["log"].count("universal stage 1: local training") == 1
    )  # stage 1 did not run again
    differences = max_differences(run_dir, reference["run_dir"])
    with capsys.disabled():
        print(
            "\nresumed deployed run vs uninterrupted run: max |difference| "
            f"{json.dumps(differences)}; "
            f"seconds {json.dumps({k: round(v, 1) for k, v in faulty_run['seconds'].items()})}, "
            f"reference {reference['seconds']:.1f}"
        )
    assert max(differences.values()) <= 1e-5, differences
