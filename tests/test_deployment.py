"""The Flower App in ``simulations/`` on Flower's Deployment Engine, with real processes.

Every test starts a real ``flower-superlink`` (no ``--simulation``) and four real
``flower-supernode`` processes on loopback, each with its own partition
(``--node-config "partition-id=I num-partitions=4"``), and submits the app with
``flwr run <app> deploy --stream`` through a ``deploy`` connection in
``$FLWR_HOME/config.toml``. What the tests found about Flower 1.42's flags and its
behaviour is in docs/deployment.md.

Flower 1.42 serves the SuperLink's Fleet, Control and Runtime (ServerAppIo) APIs over
HTTP on one port (``--host``/``--port``); a SuperNode serves its Runtime (ClientAppIo)
API on its own ``--port``, which must differ between SuperNodes on one machine.

No process outlives a test: every process is started in a session of its own and its
process group is killed in ``finally``; processes that Flower detaches into sessions of
their own (the SuperLink's ``flower-superexec``) are found by a marker in their
environment and killed too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from test_flower_app import _bin, _free_port
from simulations.flower_app import APP_DIR
from simulations.reporting import read_results_json

pytestmark = [pytest.mark.deployment, pytest.mark.integration]

TINY = "configs/digits_tiny.toml"
NUM_NODES = 4
ARCHITECTURES = {"cnn_small", "mlp", "vit_tiny", "sklearn:sgd_logreg"}
MARKER = "FLHET_DEPLOYMENT_TEST"
"""Environment variable every process a test starts (and all their children) carries."""

RUN_TIMEOUT = float(os.environ.get("FLHET_DEPLOYMENT_TIMEOUT", "2400"))
"""Seconds a ``flwr run`` may take. Every ClientApp message starts a fresh Python process
that imports torch, torchvision and scikit-learn (~14 s of CPU): a 2-round run of
digits_tiny starts 36 of them, the 3-round kill run 40. On 2 cores shared with other jobs
the runs took 6 to 28 minutes, depending on the load (docs/deployment.md)."""

MIN_GAIN_POINTS = 2.0
"""Least gain, in accuracy points, of the main phase's final round over the local-only
baseline, on the clients' own test splits and on the global test set (see _check_results).

Measured (digits_tiny is seeded; the insecure and the TLS run gave identical numbers):
main phase after 2 rounds 0.5804 own-split / 0.3278 global accuracy, local-only 0.4900 /
0.2917, i.e. +9.0 and +3.6 points; the main phase's global accuracy rose from 0.2700
after round 1.
"""


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path.name}: no file>"
    return f"--- {path.name} (last {chars} chars) ---\n{text[-chars:]}"


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER=marker`` (only our own are readable)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _pgid_of(pid: int) -> int | None:
    """The process group of ``pid`` (``None`` if it is gone)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # fields after "(comm)": state ppid pgrp


# --- certificates and keys ----------------------------------------------------------------


def _write_tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flhet test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


def _write_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's P-384 key pair in OpenSSH format (what Flower's node auth reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private, public


# --- the federation -----------------------------------------------------------------------


class Federation:
    """A SuperLink, SuperNodes and ``flwr run`` as real processes, with their logs.

    Use as a context manager: leaving it stops every process it started.
    """

    def __init__(self, tmp_path: Path, tls: dict[str, Path] | None = None,
                 node_auth: bool = False) -> None:
        self.tmp = tmp_path
        self.tls = tls
        self.node_auth = node_auth
        self.marker = uuid.uuid4().hex
        self.logs = tmp_path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = tmp_path / "flwr-home"
        self.procs: dict[str, subprocess.Popen] = {}
        self.node_keys: dict[int, Path] = {}
        self.port: int | None = None
        # flower-superlink and flower-supernode start `flower-superexec` from PATH: the
        # venv's bin must be on it even when pytest runs without an activated venv.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "FLWR_HOME": str(self.home),
                    "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "UV_OFFLINE": "1",  # the runtime `uv sync` (left on) needs no index
                    MARKER: self.marker}

    # -- processes

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` in a session of its own, stdout and stderr to ``logs/<name>.log``."""
        log_file = self.logs / f"{name}.log"
        with log_file.open("ab") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def signal_group(self, pgid: int, sig: int) -> bool:
        """``killpg(pgid, sig)`` if a process of this federation is still in that group.

        Checking first means a group id whose processes are all gone (and which the
        system may have reused) is never signalled.
        """
        if not any(_pgid_of(pid) == pgid for pid in _marked_pids(self.marker)):
            return False
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``name`` and reap its leader."""
        proc = self.procs[name]
        self.signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.signal_group(proc.pid, signal.SIGKILL)  # what the leader left in its group

    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left, then any marked stragglers."""
        for proc in self.procs.values():
            self.signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            self.signal_group(proc.pid, signal.SIGKILL)  # the group may outlive its leader
            if proc.poll() is None:
                proc.wait(timeout=30)
        for _ in range(3):  # detached children (own sessions) carry the marker
            stragglers = _marked_pids(self.marker)
            if not stragglers:
                break
            for pid in stragglers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, *names: str, chars: int = 3000) -> str:
        names = names or tuple(sorted(self.procs))
        return "\n".join(_tail(self.logs / f"{n}.log", chars) for n in names)

    # -- SuperLink

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile",
                str(self.tls["cert"]), "--ssl-keyfile", str(self.tls["key"])]

    def start_superlink(self, attempts: int = 3) -> None:
        """Start the SuperLink on a fresh port, wait for /health, write the connection."""
        for attempt in range(attempts):
            self.port = _free_port()
            name = "superlink"
            argv = [_bin("flower-superlink"), *self._tls_flags(), "--host", "127.0.0.1",
                    "--port", str(self.port)]
            if self.node_auth:
                argv.append("--enable-supernode-auth")
            proc = self.start(name, argv)
            scheme = "http" if self.tls is None else "https"
            verify = (True if self.tls is None
                      else ssl.create_default_context(cafile=str(self.tls["ca"])))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{scheme}://{self.address}/health", timeout=2,
                                 verify=verify).is_success:
                        self._write_connection()
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            self.kill(name, signal.SIGTERM)
            (self.logs / f"{name}.log").rename(self.logs / f"{name}.attempt{attempt}.log")
        raise AssertionError(f"SuperLink did not start in {attempts} attempts:\n"
                             + "\n".join(_tail(p) for p in sorted(self.logs.glob("*.log"))))

    def _write_connection(self) -> None:
        """``$FLWR_HOME/config.toml`` with the default connection ``deploy``."""
        lines = ["[superlink]", 'default = "deploy"', "", "[superlink.deploy]",
                 f'address = "{self.address}"']
        lines.append("insecure = true" if self.tls is None
                     else f'root-certificates = "{self.tls["ca"]}"')
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    # -- flwr CLI

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A short ``flwr`` command (not a run) against the ``deploy`` connection."""
        return subprocess.run([_bin("flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True)

    def register_node(self, partition: int) -> None:
        """A key pair for the node of ``partition``, registered with ``flwr supernode register``."""
        private, public = _write_node_keys(self.tmp / "node-keys", f"node{partition}")
        done = self.flwr("supernode", "register", str(public), "deploy")
        assert done.returncode == 0 and "registered successfully" in done.stdout, (
            f"flwr supernode register failed ({done.returncode}):\n{done.stdout}\n"
            f"{done.stderr}\n{self.tails('superlink')}")
        self.node_keys[partition] = private

    # -- SuperNodes

    def start_supernode(self, partition: int, node_config: str = "",
                        name: str | None = None) -> str:
        """Start the SuperNode of ``partition`` (its own Runtime API port); return its name."""
        name = name or f"supernode{partition}"
        tls = (["--insecure"] if self.tls is None
               else ["--root-certificates", str(self.tls["ca"])])
        auth = ([] if partition not in self.node_keys
                else ["--auth-supernode-private-key", str(self.node_keys[partition])])
        config = f"partition-id={partition} num-partitions={NUM_NODES} {node_config}".strip()
        self.start(name, [_bin("flower-supernode"), *tls, *auth, "--superlink", self.address,
                          "--host", "127.0.0.1", "--port", str(_free_port()),
                          "--node-config", config])
        return name

    def wait_connected(self, names: list[str], timeout: float = 120) -> None:
        """Wait until each SuperNode logged its node id (it is registered and active)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in names if self.procs[n].poll() is not None]
            assert not dead, f"SuperNode(s) {dead} exited:\n{self.tails(*dead)}"
            if all("SuperNode ID:" in self.log(n) for n in names):
                return
            time.sleep(0.5)
        raise AssertionError(f"SuperNodes not connected in {timeout} s:\n"
                             f"{self.tails('superlink', *names)}")

    def start_federation(self, node_config: str = "") -> list[str]:
        names = [self.start_supernode(i, node_config) for i in range(NUM_NODES)]
        self.wait_connected(names)
        return names

    # -- runs

    def start_run(self, run_config: str) -> subprocess.Popen:
        """``flwr run <app> deploy --stream --run-config ...``, output to logs/flwr-run.log."""
        return self.start("flwr-run", [_bin("flwr"), "run", str(APP_DIR), "deploy", "--stream",
                                       "--run-config", run_config])

    def wait_run(self, proc: subprocess.Popen, timeout: float) -> None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flwr run still running after {timeout} s:\n"
                                 f"{self.tails()}") from None


def _run_config(out: Path, **extra: object) -> str:
    items = {"config": f'"{TINY}"', "out-dir": f'"{out}"', **extra}
    return " ".join(f"{key}={value}" for key, value in items.items())


def _check_results(out: Path, fed: Federation, num_rounds: int = 2,
                   learned: bool = True) -> dict:
    """The common checks of a finished run's results.json; returns the results.

    With ``learned``: the main phase beat the local-only baseline by MIN_GAIN_POINTS on
    both test sets, and its global accuracy rose from the first round to the last.
    """
    assert (out / "results.json").is_file(), f"no results.json:\n{fed.tails()}"
    results = read_results_json(out)
    assert results["config"]["name"] == "digits_tiny"
    assert results["num_clients"] == NUM_NODES and results["num_rounds"] == num_rounds
    assert [h["round"] for h in results["history"]] == list(range(1, num_rounds + 1))
    assert {c["architecture"] for c in results["clients"]} == ARCHITECTURES
    local = results["baselines"]["local_only"]
    assert [h["round"] for h in local["history"]] == [num_rounds]  # evaluated once, at the end
    assert set(local["per_client"]) == {str(i) for i in range(NUM_NODES)}
    assert (out / "report.md").is_file()
    if not learned:
        return results
    # The run learned: distillation beats training alone, on both test sets.
    for key in ("client_accuracy_mean", "global_accuracy_mean"):
        final, base = results["final"][key], local[key]
        assert final is not None and base is not None, key
        assert 100 * (final - base) > MIN_GAIN_POINTS, (
            f"main phase {key} {final:.4f} vs local-only {base:.4f}: "
            f"gain below {MIN_GAIN_POINTS} points")
    first, last = results["history"][0], results["history"][-1]
    assert last["global_accuracy_mean"] > first["global_accuracy_mean"]
    return results


def _run_to_completion(fed: Federation, out: Path, timeout: float = RUN_TIMEOUT,
                       **extra: object) -> float:
    """Start the run (``extra``: more run-config entries), wait for it, check it
    succeeded; return its seconds."""
    began = time.monotonic()
    run = fed.start_run(_run_config(out, **extra))
    fed.wait_run(run, timeout)
    seconds = time.monotonic() - began
    assert run.returncode == 0, f"flwr run exited with {run.returncode}:\n{fed.tails()}"
    print(f"flwr run took {seconds:.1f} s")
    return seconds


# --- tests --------------------------------------------------------------------------------


def test_insecure_deployment_runs_the_experiment(tmp_path):
    """SuperLink and 4 SuperNodes without TLS: the run learns and writes its results."""
    out = tmp_path / "out"
    with Federation(tmp_path) as fed:
        fed.start_superlink()
        fed.start_federation()
        _run_to_completion(fed, out)
        # The ServerApp ran on the deployment SuperLink, the ClientApps on the SuperNodes.
        assert "flhet: results written to" in fed.log("flwr-run"), fed.tails("flwr-run")
        for i in range(NUM_NODES):
            assert "Receiving: train message" in fed.log(f"supernode{i}"), fed.tails(
                f"supernode{i}")
    results = _check_results(out, fed)
    assert all(h["num_failures"] == 0 for h in results["history"])
    assert all(set(h["per_client"]) == {str(i) for i in range(NUM_NODES)}
               for h in results["history"])
    assert not _marked_pids(fed.marker), "processes outlived the test"


def test_tls_deployment_with_supernode_authentication(tmp_path):
    """TLS on every API, SuperNode auth on: only registered node keys may connect."""
    tls = _write_tls_files(tmp_path / "certs")
    out = tmp_path / "out"
    with Federation(tmp_path, tls=tls, node_auth=True) as fed:
        fed.start_superlink()
        for i in range(NUM_NODES):
            fed.register_node(i)
        listed = fed.flwr("supernode", "list", "deploy", "--format", "json")
        assert listed.returncode == 0, f"{listed.stdout}\n{listed.stderr}"
        assert listed.stdout.count('"status": "registered"') == NUM_NODES, listed.stdout
        # A SuperNode whose key was not registered is refused and exits.
        fed.node_keys[NUM_NODES], _ = _write_node_keys(tmp_path / "node-keys", "stranger")
        stranger = fed.start_supernode(NUM_NODES, name="stranger")
        fed.start_federation()
        try:
            code = fed.procs[stranger].wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        assert code not in (0, None), f"unregistered SuperNode not refused:\n{fed.tails(stranger)}"
        assert "Failed to activate SuperNode" in fed.log(stranger), fed.tails(stranger)
        assert "No SuperNode found with the given public key" in fed.log("superlink")
        fed.kill(stranger)  # its flower-superexec may still be in the group
        _run_to_completion(fed, out, **{"num-rounds": 1})  # learning: the insecure test
    results = _check_results(out, fed, num_rounds=1, learned=False)
    assert all(set(h["per_client"]) == {str(i) for i in range(NUM_NODES)}
               for h in results["history"])
    assert all(h["num_failures"] == 0 for h in results["history"])
    assert not _marked_pids(fed.marker), "processes outlived the test"


KILL_ROUNDS = 3
KILLED = 2
"""Partition of the SuperNode killed in round 2 (the ViT: the slowest to train)."""


def _wait_for(fed: Federation, names: tuple[str, ...], pattern: str, run: subprocess.Popen,
              timeout: float) -> None:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(regex.search(fed.log(n)) for n in names):
            return
        assert run.poll() is None, f"flwr run ended before {pattern!r}:\n{fed.tails()}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {timeout} s:\n{fed.tails()}")


def test_killed_supernode_rejoins_and_the_run_completes(tmp_path):
    """SIGKILL one SuperNode in round 2, restart it: the round counts a failure, the run
    finishes all rounds, and the restarted node (its client id) trains again later."""
    out = tmp_path / "out"
    checkpoints = tmp_path / "node-checkpoints"
    node_config = f'checkpoint-dir="{checkpoints}"'  # a restarted node resumes from it
    with Federation(tmp_path) as fed:
        fed.start_superlink()
        fed.start_federation(node_config)
        began = time.monotonic()
        run = fed.start_run(_run_config(out, **{"num-rounds": KILL_ROUNDS}))
        # Round 1 evaluated: round 2's training messages are out (or about to be).
        _wait_for(fed, ("flwr-run",), r"round 1: client accuracy", run, RUN_TIMEOUT)
        fed.kill(f"supernode{KILLED}")
        killed_at = time.monotonic()
        fed.start_supernode(KILLED, node_config, name="restarted")
        fed.wait_connected(["restarted"])
        rejoined = time.monotonic() - killed_at
        # The SuperLink answers for the dead node once its heartbeats are overdue.
        _wait_for(fed, ("flwr-run",), r"failed: Error: Node Unavailable", run, RUN_TIMEOUT)
        noticed = time.monotonic() - killed_at
        fed.wait_run(run, RUN_TIMEOUT)
        seconds = time.monotonic() - began
        print(f"flwr run took {seconds:.1f} s; after the kill: restarted node connected in "
              f"{rejoined:.1f} s, dead node's failure logged in {noticed:.1f} s")
        assert run.returncode == 0, f"flwr run exited with {run.returncode}:\n{fed.tails()}"
        run_log = fed.log("flwr-run")
        restarted_log = fed.log("restarted")
    assert (out / "results.json").is_file(), f"no results.json:\n{fed.tails()}"
    history = {h["round"]: h for h in read_results_json(out)["history"]}
    failed = [r for r, h in history.items() if h["num_failures"] >= 1]
    assert failed and min(failed) >= 2, f"failures in rounds {failed}:\n{run_log[-4000:]}"
    assert re.search(r"\[main\] round 2/\d+.*: 3 accepted, 0 rejected, 1 failed", run_log), \
        run_log[-4000:]
    assert history[2]["num_failures"] == 1  # the SuperLink's error reply, counted once
    # The restarted node (new node id, same partition id) took part again under its
    # client id: the strategy waits for min_available_nodes = 4 before every sampling, so
    # round 2's evaluation already waited for it, and it trained round 3.
    assert "Receiving: train message" in restarted_log, restarted_log[-3000:]
    for r in range(2, KILL_ROUNDS + 1):
        assert set(history[r]["per_client"]) == {str(i) for i in range(NUM_NODES)}, history[r]
    # It never finished round 2, resumed from its round-1 state and trained the last round.
    saved = sorted(p.name for p in (checkpoints / "main").glob(f"client-{KILLED}.r*.npz"))
    assert f"client-{KILLED}.r{KILL_ROUNDS:06d}.npz" in saved, saved
    assert f"client-{KILLED}.r000002.npz" not in saved, saved
    assert not _marked_pids(fed.marker), "processes outlived the test"
    # Rounds without one client's knowledge: no learning claim (see docs/deployment.md).
    _check_results(out, fed, num_rounds=KILL_ROUNDS, learned=False)
