"""Puts, gets, appends and scans through the sync client and through asyncio.

With a dev cluster running (`tessera dev --data tessera-data`):

    python examples/quickstart.py tessera-data
"""

from __future__ import annotations

import asyncio
import sys

import tessera
import tessera.aio


def sync_demo(data_dir: str) -> None:
    with tessera.connect(data_dir=data_dir) as db:
        db.put("fruit/apple", "red")
        db.put(b"fruit/banana", b"yellow")
        assert db.get("fruit/apple") == b"red"
        assert db.get("fruit/cherry") is None
        assert db.append("fruit/apple", " and green") == len("red and green")
        assert db.compare_and_swap("fruit/banana", "yellow", "brown")
        db.batch_put({"fruit/cherry": "dark red", "fruit/date": "brown"})
        print(db.batch_get(["fruit/apple", "fruit/kiwi"]))
        for key, value in db.scan("fruit/", "fruit0"):
            print(key.decode(), value.decode())
        print([key for key, _ in db.scan("fruit/", "fruit0", reverse=True, limit=2)])
        try:
            db.put(b"k" * 10_000, b"too long a key")
        except tessera.KeyTooLarge as e:
            print(e.code, e.size, e.limit)
        try:
            db.put("fruit/apple", "ripe", timeout=0.5)
        except tessera.Undetermined:
            print("may or may not have been applied: read it back")
        except (tessera.Unavailable, tessera.DeadlineExceeded) as e:
            print("not applied:", e.code)


async def async_demo(data_dir: str) -> None:
    async with tessera.aio.connect(data_dir=data_dir) as db:
        await db.put("veg/leek", "green")
        print(await db.get("veg/leek"))
        print(await db.append("veg/leek", "!"))
        lengths = await asyncio.gather(*(db.append(f"veg/{i}", "x") for i in range(10)))
        print(lengths)
        async for key, value in db.scan("veg/", "veg0"):
            print(key, value)


if __name__ == "__main__":
    data = sys.argv[1] if len(sys.argv) > 1 else "tessera-data"
    sync_demo(data)
    asyncio.run(async_demo(data))
