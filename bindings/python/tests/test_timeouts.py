"""A stopped cluster: calls end with `Unavailable` or `DeadlineExceeded` within their timeout,
the GIL is free while a call waits, and Ctrl-C interrupts a waiting call."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import tessera
import tessera.aio
from conftest import DevCluster

KEY = b"\x50timeouts"
#: Slack over a call's timeout: the client stops at its deadline; this is scheduling noise.
SLACK = 1.5


@pytest.fixture(scope="module")
def stopped() -> Iterator[Tuple[tessera.Client, Path]]:
    """A client of a dev cluster that was then stopped (the client saw it up)."""
    with tempfile.TemporaryDirectory(prefix="tessera-py-stopped-") as tmp:
        cluster = DevCluster(Path(tmp) / "data")
        try:
            db = cluster.connect()
            db.put(KEY, b"v")
            assert db.get(KEY) == b"v"
        finally:
            cluster.stop()
        with db:
            yield db, cluster.data


def test_a_stopped_cluster_gives_unavailable_or_deadline_exceeded_within_the_timeout(
    stopped: Tuple[tessera.Client, Path],
) -> None:
    db, _ = stopped
    for call in (lambda: db.get(KEY, timeout=2), lambda: db.get(KEY, stale=True, timeout=2), lambda: db.status(timeout=2)):
        started = time.monotonic()
        with pytest.raises((tessera.Unavailable, tessera.DeadlineExceeded)) as e:
            call()
        assert time.monotonic() - started < 2 + SLACK
        assert e.value.code in ("Unavailable", "DeadlineExceeded")


def test_a_write_to_a_stopped_cluster_fails_within_the_timeout(stopped: Tuple[tessera.Client, Path]) -> None:
    db, _ = stopped
    # The cluster stopped between calls, so no attempt can have reached it: the failure is
    # definite (a write cut off mid-request would be Undetermined instead).
    for write in (lambda: db.put(KEY, b"w", timeout=2), lambda: db.append(KEY, b"w", timeout=2)):
        started = time.monotonic()
        with pytest.raises((tessera.Unavailable, tessera.DeadlineExceeded)):
            write()
        assert time.monotonic() - started < 2 + SLACK


def test_connecting_to_a_stopped_cluster_is_unavailable_within_the_timeout(stopped: Tuple[tessera.Client, Path]) -> None:
    _, data = stopped
    started = time.monotonic()
    with pytest.raises((tessera.Unavailable, tessera.DeadlineExceeded)):
        tessera.connect(data_dir=data, timeout=2)
    assert time.monotonic() - started < 2 + SLACK

    async def connect() -> None:
        await tessera.aio.connect(data_dir=data, timeout=2)

    started = time.monotonic()
    with pytest.raises((tessera.Unavailable, tessera.DeadlineExceeded)):
        asyncio.run(connect())
    assert time.monotonic() - started < 2 + SLACK


def test_a_stopped_cluster_times_out_async_calls(stopped: Tuple[tessera.Client, Path]) -> None:
    _, data = stopped

    async def scenario() -> None:
        # The native client is shared; the asyncio wrapper awaits its calls.
        db = tessera.aio.Client(stopped[0]._native)
        started = time.monotonic()
        results = await asyncio.gather(*(db.get(KEY, timeout=2) for _ in range(10)), return_exceptions=True)
        assert time.monotonic() - started < 2 + SLACK
        assert all(isinstance(r, (tessera.Unavailable, tessera.DeadlineExceeded)) for r in results), results

    asyncio.run(scenario())


def test_the_gil_is_released_while_a_call_waits(stopped: Tuple[tessera.Client, Path]) -> None:
    db, _ = stopped
    done = threading.Event()

    def blocked() -> None:
        try:
            db.get(KEY, timeout=2)
        except tessera.Error:
            pass
        done.set()

    threading.Thread(target=blocked).start()
    spins = 0
    while not done.is_set():
        spins += 1
    # Pure-Python work ran on this thread the whole time the other one waited in Rust.
    assert spins > 100_000


def test_ctrl_c_interrupts_a_waiting_call(stopped: Tuple[tessera.Client, Path]) -> None:
    db, _ = stopped
    assert threading.current_thread() is threading.main_thread(), "signals reach the main thread only"
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        db.get(KEY, timeout=10)
    assert time.monotonic() - started < 2, "interrupted long before the 10 s timeout"
    timer.join()
