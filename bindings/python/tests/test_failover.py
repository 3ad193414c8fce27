"""A region's leader is stopped (SIGKILL of its node's process) while writers run: writes go
on, no acknowledged write is lost, and none is applied twice (as cli/tests/cluster/
failover.rs and cli/tests/binary/crash.rs check for the Rust client).

Each writer appends unique tokens (`<writer>:<n>;`) to its own key, so the final values show
a lost acknowledged write (its token missing) and a write applied twice (its token twice).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Dict, List

import tessera
import tessera.aio
from conftest import ProcCluster

WRITERS = 8
ACKS_BEFORE_STOP = 80
ACKS_AFTER_STOP = 40
MAX_WRITES = 5_000


class Record:
    """Every writer's tokens by outcome."""

    def __init__(self) -> None:
        self.acked: Dict[int, List[str]] = {w: [] for w in range(WRITERS)}
        self.undetermined: Dict[int, List[str]] = {w: [] for w in range(WRITERS)}


def key_of(prefix: bytes, w: int) -> bytes:
    return prefix + f"writer-{w}".encode()


def verify(db: tessera.Client, prefix: bytes, record: Record) -> None:
    for w in range(WRITERS):
        value = db.get(key_of(prefix, w)) or b""
        tokens = Counter(t for t in value.decode().split(";") if t)
        for t in record.acked[w]:
            assert tokens[t] == 1, f"acknowledged append {t} found {tokens[t]} times"
        known = set(record.acked[w]) | set(record.undetermined[w])
        assert set(tokens) <= known, f"tokens never written: {set(tokens) - known}"
        assert all(n == 1 for n in tokens.values()), "an append was applied twice"
        assert len(record.acked[w]) >= ACKS_AFTER_STOP


def test_a_leader_stopped_mid_run_loses_no_acknowledged_write(proc_cluster: ProcCluster) -> None:
    prefix = b"\x50failover-sync/"
    db = proc_cluster.connect()
    victim = proc_cluster.leader_node_of(db, prefix)
    record = Record()
    progress = threading.Condition()
    acked_before = [0]
    stopped = threading.Event()
    failures: List[BaseException] = []

    def writer(w: int) -> None:
        after_stop = 0
        try:
            for j in range(MAX_WRITES):
                if after_stop >= ACKS_AFTER_STOP:
                    return
                token = f"{w}:{j}"
                was_stopped = stopped.is_set()
                try:
                    db.append(key_of(prefix, w), token + ";")
                except tessera.Undetermined:
                    record.undetermined[w].append(token)
                    continue
                record.acked[w].append(token)
                if was_stopped:
                    after_stop += 1
                else:
                    with progress:
                        acked_before[0] += 1
                        progress.notify_all()
            raise AssertionError(f"writer {w} made no progress after the leader stopped")
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    with progress:
        assert progress.wait_for(lambda: acked_before[0] >= ACKS_BEFORE_STOP or bool(failures), timeout=60)
    proc_cluster.kill_node(victim)
    stopped.set()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    db.close()

    with proc_cluster.connect() as reader:
        verify(reader, prefix, record)
        # PD learns the new leader, on a running node.
        assert proc_cluster.leader_node_of(reader, prefix) != victim
    proc_cluster.start_node(victim)


def test_a_leader_stopped_mid_run_loses_no_acknowledged_write_async(proc_cluster: ProcCluster) -> None:
    prefix = b"\xa0failover-async/"
    with proc_cluster.connect() as sync_db:
        victim = proc_cluster.leader_node_of(sync_db, prefix)
    record = Record()

    async def scenario() -> None:
        acked_before = 0
        enough = asyncio.Event()
        stopped = asyncio.Event()

        async def writer(db: tessera.aio.Client, w: int) -> None:
            nonlocal acked_before
            after_stop = 0
            for j in range(MAX_WRITES):
                if after_stop >= ACKS_AFTER_STOP:
                    return
                token = f"{w}:{j}"
                was_stopped = stopped.is_set()
                try:
                    await db.append(key_of(prefix, w), token + ";")
                except tessera.Undetermined:
                    record.undetermined[w].append(token)
                    continue
                record.acked[w].append(token)
                if was_stopped:
                    after_stop += 1
                else:
                    acked_before += 1
                    if acked_before >= ACKS_BEFORE_STOP:
                        enough.set()
            raise AssertionError(f"writer {w} made no progress after the leader stopped")

        async with tessera.aio.connect(
            proc_cluster.pd_addr,
            ca=proc_cluster.cert("ca.pem"),
            cert=proc_cluster.cert("client-py.pem"),
            key=proc_cluster.cert("client-py-key.pem"),
        ) as db:
            tasks = [asyncio.ensure_future(writer(db, w)) for w in range(WRITERS)]
            await asyncio.wait_for(enough.wait(), timeout=60)
            # The kill blocks (it waits for the process): off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, proc_cluster.kill_node, victim)
            stopped.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    asyncio.run(scenario())
    with proc_cluster.connect() as reader:
        verify(reader, prefix, record)
        assert proc_cluster.leader_node_of(reader, prefix) != victim
    proc_cluster.start_node(victim)


def test_the_restarted_nodes_serve_again(proc_cluster: ProcCluster) -> None:
    with proc_cluster.connect() as db:
        status = db.status()
        assert {n.id for n in status.nodes} == {1, 2, 3}
        db.put(b"\x10after-restarts", b"ok")
        assert db.get(b"\x10after-restarts") == b"ok"


