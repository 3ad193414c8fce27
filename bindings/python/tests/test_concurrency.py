"""Many threads on one sync client, many tasks on one asyncio client: no deadlock, every
result right."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List

import tessera
import tessera.aio
from conftest import PREFIX, DevCluster

OPS_PER_WORKER = 20


def worker_keys(tag: str, w: int) -> List[bytes]:
    # Workers spread over the regions: alternate first bytes across the dev cluster's ranges.
    first = [b"\x10", b"\x50", PREFIX + b"c", PREFIX + b"k", PREFIX + b"s", b"\x90", b"\xd0"][w % 7]
    return [first + f"{tag}-{w:03}-{i:03}".encode() for i in range(OPS_PER_WORKER)]


def test_32_threads_share_one_sync_client(db: tessera.Client) -> None:
    barrier = threading.Barrier(32)

    def work(w: int) -> int:
        keys = worker_keys("threads", w)
        barrier.wait(timeout=30)
        for i, k in enumerate(keys):
            db.put(k, f"{w}:{i}")
            assert db.get(k) == f"{w}:{i}".encode()
        counter = b"\x05count-" + keys[0]
        for _ in range(5):
            db.append(counter, b".")
        assert db.batch_get(keys) == [f"{w}:{i}".encode() for i in range(len(keys))]
        assert [k for k, _ in db.scan(keys[0], keys[-1] + b"\x00")] == keys
        return len(db.get(counter) or b"")

    with ThreadPoolExecutor(max_workers=32) as pool:
        counts = list(pool.map(work, range(32), timeout=300))
    assert counts == [5] * 32


def test_256_tasks_share_one_async_client(dev_cluster: DevCluster) -> None:
    async def work(db: tessera.aio.Client, w: int) -> int:
        keys = worker_keys("tasks", w)[:5]
        for i, k in enumerate(keys):
            await db.put(k, f"{w}:{i}")
        assert await db.batch_get(keys) == [f"{w}:{i}".encode() for i in range(len(keys))]
        assert [k async for k, _ in db.scan(keys[0], keys[-1] + b"\x00")] == keys
        counter = b"\x05count-" + keys[0]
        for _ in range(3):
            await db.append(counter, b".")
        return len(await db.get(counter) or b"")

    async def scenario() -> List[int]:
        async with tessera.aio.connect(data_dir=dev_cluster.data) as db:
            return await asyncio.wait_for(asyncio.gather(*(work(db, w) for w in range(256))), timeout=300)

    assert asyncio.run(scenario()) == [3] * 256
