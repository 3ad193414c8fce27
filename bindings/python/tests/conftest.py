"""Clusters for the tests: real `tessera` processes on loopback, with OS-assigned ports.

- `dev_cluster` (session): one `tessera dev --data TMP`, with extra region boundaries
  split inside the tests' key prefix, so the conformance tests cross regions.
- `ProcCluster`: PD and three `tessera node` processes, so one node can be stopped
  (`tessera dev` runs every node in one process). Used by the failover tests.

Every process is started in its own process group and killed with it at the end. Start-up
waits on the line each process prints when it is ready, not on sleeps.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

import tessera

ROOT = Path(__file__).resolve().parents[3]

#: Keys of the conformance tests start with this; `dev_cluster` splits regions inside it.
PREFIX = b"py/"
#: Region boundaries `dev_cluster` adds (the dev cluster's own fall on first bytes 0x40,
#: 0x80 and 0xc0, outside the prefix).
SPLITS = [b"py/h", b"py/p", b"py/x"]


def tessera_bin() -> str:
    """The `tessera` binary: $TESSERA_BIN, else the workspace's debug or release build."""
    env = os.environ.get("TESSERA_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        candidate = ROOT / "target" / profile / "tessera"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("no tessera binary: run `cargo build -p tessera-cli --bin tessera` or set TESSERA_BIN")


class Proc:
    """A child process in its own process group; its output lines are queued for `wait_for`."""

    def __init__(self, args: List[str], log_filter: str = "error") -> None:
        env = dict(os.environ, RUST_LOG=log_filter, NO_COLOR="1")
        self.args = args
        self.popen = subprocess.Popen(
            [tessera_bin(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.output: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout as out:
            for raw in out:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.output.append(line)
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 60.0) -> str:
        """Waits for an output line containing `needle`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise TimeoutError(f"no line with {needle!r} from {self.args} in {timeout} s") from None
            if line is None:
                raise RuntimeError(f"{self.args} exited ({self.popen.wait()}):\n" + "\n".join(self.output[-30:]))
            if needle in line:
                return line

    def signal(self, sig: int) -> None:
        """Sends `sig` to the process group."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the group, then SIGKILL if it has not exited within `timeout`."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.reader.join(timeout=10)

    def kill(self) -> None:
        """SIGKILL to the group: no shutdown code runs."""
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self.reader.join(timeout=10)


def run_tessera(*args: str) -> str:
    """Runs a `tessera` command to completion; returns its output."""
    done = subprocess.run(
        [tessera_bin(), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, RUST_LOG="error"),
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tessera {args} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


class DevCluster:
    """`tessera dev --data DIR`, ready once it prints `ready`."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc = Proc(["dev", "--data", str(data)])
        self.proc.wait_for("ready:", timeout=120)

    def connect(self, **kwargs: object) -> tessera.Client:
        return tessera.connect(data_dir=self.data, **kwargs)  # type: ignore[arg-type]

    def split(self, key: bytes) -> None:
        """Splits the region containing `key` at `key`, and waits until the split is done."""
        run_tessera("--data", str(self.data), "admin", "split", key.decode())

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[DevCluster]:
    """A dev cluster for the whole session, with regions split at `SPLITS`."""
    with tempfile.TemporaryDirectory(prefix="tessera-py-") as tmp:
        cluster = DevCluster(Path(tmp) / "data")
        try:
            for key in SPLITS:
                cluster.split(key)
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="session")
def db(dev_cluster: DevCluster) -> Iterator[tessera.Client]:
    """One sync client of the dev cluster, shared by the tests."""
    with dev_cluster.connect() as client:
        yield client


# Ports restartable_port() handed out in this process.
_HANDED_OUT: Set[int] = set()


def _free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def restartable_port() -> int:
    """A free port (UDP for QUIC, TCP for WebSocket) for a server restarted on it.

    Not from bind(0): the kernel hands out its ephemeral range (32768-60999 by default),
    where every client socket draws too, so while a node is down another socket could take
    its port. A random port below that range, never one handed out before, free now, as
    the Rust cluster tests do (cli/tests/common/ports.rs).
    """
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        if port not in _HANDED_OUT and _free(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port in 20000-32000")


class ProcCluster:
    """PD and three nodes as separate processes, each on a port of its own for the
    cluster's life (restartable_port), so a node restarts in place."""

    NODES = (1, 2, 3)

    def __init__(self, root: Path, regions: int = 4) -> None:
        self.root = root
        self.certs = root / "certs"
        c = str(self.certs)
        run_tessera("certs", "init-ca", "--dir", c)
        run_tessera("certs", "pd", "--dir", c, "--host", "127.0.0.1")
        for i in self.NODES:
            run_tessera("certs", "node", "--dir", c, "--id", str(i), "--host", "127.0.0.1")
        run_tessera("certs", "client", "--dir", c, "--name", "py")
        self.pd_addr = f"127.0.0.1:{restartable_port()}"
        self.ports: Dict[int, int] = {i: restartable_port() for i in self.NODES}
        self.pd = Proc(
            [
                "pd",
                "--listen", self.pd_addr,
                "--dir", str(root / "pd"),
                "--initial-regions", str(regions),
                "--tls-ca", self.cert("ca.pem"),
                "--tls-cert", self.cert("pd.pem"),
                "--tls-key", self.cert("pd-key.pem"),
            ]
        )  # fmt: skip
        self.pd.wait_for("PD listening", timeout=30)
        self.nodes: Dict[int, Optional[Proc]] = {}
        for i in self.NODES:
            self.start_node(i)

    def cert(self, name: str) -> str:
        return str(self.certs / name)

    def start_node(self, node_id: int) -> None:
        node = Proc(
            [
                "node",
                "--id", str(node_id),
                "--listen", f"127.0.0.1:{self.ports[node_id]}",
                "--dir", str(self.root / f"node{node_id}"),
                "--pd-endpoints", self.pd_addr,
                "--tls-ca", self.cert("ca.pem"),
                "--tls-cert", self.cert(f"node-{node_id}.pem"),
                "--tls-key", self.cert(f"node-{node_id}-key.pem"),
            ],
            log_filter="warn,tessera_node=info",
        )  # fmt: skip
        node.wait_for("listening", timeout=30)
        self.nodes[node_id] = node

    def kill_node(self, node_id: int) -> None:
        """SIGKILL of one node's process."""
        node = self.nodes[node_id]
        assert node is not None, f"node {node_id} is not running"
        node.kill()
        self.nodes[node_id] = None

    def connect(self, **kwargs: object) -> tessera.Client:
        return tessera.connect(
            self.pd_addr,
            ca=self.cert("ca.pem"),
            cert=self.cert("client-py.pem"),
            key=self.cert("client-py-key.pem"),
            **kwargs,  # type: ignore[arg-type]
        )

    def leader_node_of(self, db: tessera.Client, key: bytes, timeout: float = 30.0) -> int:
        """The node PD reports as leading `key`'s region, once it reports one on a running
        node (asks PD every 50 ms, as the Rust cluster harness does)."""
        deadline = time.monotonic() + timeout
        while True:
            node = db._native.debug_leader_node(key)
            if node is not None and self.nodes.get(node) is not None:
                return node
            if time.monotonic() > deadline:
                raise TimeoutError(f"no running leader of {key!r} reported")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node is not None:
                node.kill()
        self.pd.kill()


@pytest.fixture(scope="module")
def proc_cluster() -> Iterator[ProcCluster]:
    """PD and three node processes, for the tests of this module."""
    with tempfile.TemporaryDirectory(prefix="tessera-py-procs-") as tmp:
        cluster = ProcCluster(Path(tmp))
        try:
            yield cluster
        finally:
            cluster.stop()
