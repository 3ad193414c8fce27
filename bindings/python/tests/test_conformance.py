"""The Rust SDK's conformance scenarios (cli/tests/cluster/{kv_ops,routing,exactly_once,
limits}.rs), through the sync and the asyncio client, against a real dev cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Coroutine, List, Optional, Tuple, TypeVar

import pytest

import tessera
import tessera.aio
from conftest import PREFIX, DevCluster

T = TypeVar("T")

#: First bytes that put keys in each of the dev cluster's regions: its own (split at 0x40,
#: 0x80, 0xc0) and the ones `dev_cluster` split inside the prefix (at py/h, py/p, py/x).
SPREAD = [b"\x10", b"\x50", PREFIX + b"a", PREFIX + b"i", PREFIX + b"q", PREFIX + b"y", b"\x90", b"\xd0"]

MAX_KEY = 8 * 1024
MAX_VALUE = 1024 * 1024


def run(coro: Coroutine[object, object, T]) -> T:
    return asyncio.run(coro)


def spread_keys(tag: str, per_region: int = 3) -> List[bytes]:
    """Keys in every region, tagged so tests sharing the cluster do not collide."""
    return [first + f"{tag}-{i:03}".encode() for first in SPREAD for i in range(per_region)]


def regions_of(status: tessera.ClusterStatus, keys: List[bytes]) -> set[int]:
    def contains(r: tessera.RegionStatus, k: bytes) -> bool:
        return r.start <= k and (r.end == b"" or k < r.end)

    return {next(r.id for r in status.regions if contains(r, k)) for k in keys}


def async_client(dev_cluster: DevCluster) -> tessera.aio.Connecting:
    return tessera.aio.connect(data_dir=dev_cluster.data)


# -- every operation across regions -------------------------------------------------------


def test_every_operation_works_on_keys_in_every_region(db: tessera.Client) -> None:
    keys = spread_keys("ops-sync")
    assert len(regions_of(db.status(), keys)) == 7, "the keys span every region"
    for i, k in enumerate(keys):
        db.put(k, f"v{i}")
    for i, k in enumerate(keys):
        assert db.get(k) == f"v{i}".encode()
    assert db.delete(keys[0]) is True
    assert db.delete(keys[0]) is False
    assert db.get(keys[0]) is None

    for k in keys[1:]:
        assert db.append(k, b"+") == len(db.get(k) or b"")
    assert db.append(keys[0], "ab") == 2, "an absent key appends as empty"
    assert db.get(keys[0]) == b"ab"

    cas = keys[-1] + b"-cas"
    assert db.compare_and_swap(cas, None, b"one") is True
    assert db.compare_and_swap(cas, None, b"two") is False
    assert db.compare_and_swap(cas, b"one", b"two") is True
    assert db.get(cas) == b"two"
    assert db.compare_and_swap(cas, b"two", None) is True, "new=None deletes"
    assert db.get(cas) is None

    pairs = [(k + b"-b", b"b" + k) for k in keys]
    db.batch_put(pairs)
    assert db.batch_get([k for k, _ in pairs] + [b"\x01absent"]) == [v for _, v in pairs] + [None]
    db.batch_put({keys[1] + b"-m": "mapping"})
    assert db.get(keys[1] + b"-m") == b"mapping"

    # A stale read is served by any replica: it sees the write once that replica applied it.
    deadline = time.monotonic() + 10
    while db.get(keys[2], stale=True) != db.get(keys[2]):
        assert time.monotonic() < deadline, "a replica never applied the write"
    got = list(db.scan(keys[0][:1], keys[0][:1] + b"\xff"))
    assert (keys[0], b"ab") in got


def test_every_operation_works_on_keys_in_every_region_async(dev_cluster: DevCluster) -> None:
    async def scenario() -> None:
        async with async_client(dev_cluster) as db:
            keys = spread_keys("ops-async")
            assert len(regions_of(await db.status(), keys)) == 7
            await asyncio.gather(*(db.put(k, f"v{i}") for i, k in enumerate(keys)))
            assert await asyncio.gather(*(db.get(k) for k in keys)) == [f"v{i}".encode() for i in range(len(keys))]
            assert await db.delete(keys[0]) is True
            assert await db.delete(keys[0]) is False
            assert await db.get(keys[0]) is None
            assert await db.append(keys[0], b"ab") == 2
            assert await db.append(keys[0], bytearray(b"cd")) == 4
            assert await db.get(keys[0]) == b"abcd"
            cas = keys[-1] + b"-cas"
            assert await db.compare_and_swap(cas, None, "one") is True
            assert await db.compare_and_swap(cas, None, "two") is False
            assert await db.compare_and_swap(cas, "one", None) is True
            assert await db.get(cas) is None
            pairs = [(k + b"-b", b"b" + k) for k in keys]
            await db.batch_put(pairs)
            assert await db.batch_get([k for k, _ in pairs]) == [v for _, v in pairs]
            deadline = time.monotonic() + 10
            while await db.get(keys[1], stale=True) != b"v1":
                assert time.monotonic() < deadline, "a replica never applied the write"

    run(scenario())


def test_keys_and_values_accept_bytes_bytearray_memoryview_and_str(db: tessera.Client) -> None:
    key = PREFIX + b"types"
    for value in (b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview"), "str-\u00e9"):
        db.put(memoryview(key), value)
        expected = value.encode() if isinstance(value, str) else bytes(value)
        for k in (key, bytearray(key), memoryview(key), key.decode()):
            assert db.get(k) == expected
    with pytest.raises(TypeError, match="key must be bytes"):
        db.get(42)  # type: ignore[arg-type]


# -- scans across region boundaries ---------------------------------------------------------


def scan_keys(dev_cluster: DevCluster, tag: str) -> Tuple[List[bytes], bytes, bytes]:
    """300 keys under their own prefix, split into three regions; the range covering them."""
    base = PREFIX + f"scan-{tag}/".encode()
    keys = [base + f"{i:04}".encode() for i in range(300)]
    for i in (100, 200):
        dev_cluster.split(keys[i])
    return keys, base, base[:-1] + b"0"


def test_scans_cross_region_boundaries_in_order_forward_and_reverse(
    dev_cluster: DevCluster, db: tessera.Client
) -> None:
    keys, lo, hi = scan_keys(dev_cluster, "sync")
    assert len(regions_of(db.status(), keys)) == 3
    db.batch_put([(k, k) for k in keys])

    # Small pages force resumption inside regions as well as across them.
    assert [k for k, _ in db.scan(lo, hi, page_size=7)] == keys
    assert [k for k, _ in db.scan(lo, hi, page_size=7, reverse=True)] == keys[::-1]
    assert [k for k, _ in db.scan(keys[50], keys[250], limit=120, page_size=16)] == keys[50:170]
    assert [k for k, _ in db.scan(keys[50], keys[250], limit=120, reverse=True)] == keys[249:129:-1]
    assert all(k == v for k, v in db.scan(lo, hi))
    scan = db.scan(lo, hi, page_size=1)
    assert next(scan) == (keys[0], keys[0]), "a scan is a lazy iterator"
    assert list(db.scan(hi, hi + b"\x00")) == []
    with pytest.raises(tessera.InvalidArgument):
        db.scan(hi, lo)


def test_scans_cross_region_boundaries_in_order_forward_and_reverse_async(dev_cluster: DevCluster) -> None:
    keys, lo, hi = scan_keys(dev_cluster, "async")

    async def scenario() -> None:
        async with async_client(dev_cluster) as db:
            await db.batch_put([(k, k) for k in keys])
            assert [k async for k, _ in db.scan(lo, hi, page_size=7)] == keys
            assert [k async for k, _ in db.scan(lo, hi, page_size=7, reverse=True)] == keys[::-1]
            got = [k async for k, _ in db.scan(keys[50], keys[250], limit=120, page_size=16)]
            assert got == keys[50:170]

    run(scenario())


# -- stale routing is corrected -------------------------------------------------------------


def test_a_cached_follower_as_leader_is_corrected_by_not_leader(dev_cluster: DevCluster) -> None:
    key = b"\x90stale-leader-sync"
    with dev_cluster.connect() as db:
        db.put(key, b"v1")
        native = db._native
        leader, follower = native.debug_cache_follower_as_leader(key)
        assert native.debug_cached_leader(key) == follower, "the cache starts out wrong"
        assert db.get(key) == b"v1"
        assert native.debug_cached_leader(key) == leader, "NotLeader's hint fixed the cache"
        native.debug_cache_follower_as_leader(key)
        db.put(key, b"v2")
        assert native.debug_cached_leader(key) == leader
        assert db.get(key) == b"v2"


def test_a_cached_old_epoch_is_replaced_from_epoch_not_match(dev_cluster: DevCluster) -> None:
    key = b"\xc0stale-epoch-sync"
    with dev_cluster.connect() as db:
        db.put(key, b"v1")
        native = db._native
        current, stale = native.debug_cache_stale_epoch(key)
        assert native.debug_cached_epoch(key) == stale != current
        assert db.get(key) == b"v1"
        assert native.debug_cached_epoch(key) == current, "EpochNotMatch replaced the cached region"
        native.debug_cache_stale_epoch(key)
        db.put(key, b"v2")
        assert db.get(key) == b"v2"


def test_stale_routing_is_corrected_async(dev_cluster: DevCluster) -> None:
    key = b"\x90stale-async"

    async def scenario() -> None:
        async with async_client(dev_cluster) as db:
            await db.put(key, b"v1")
            native = db._native
            leader, follower = native.debug_cache_follower_as_leader(key)
            assert await db.get(key) == b"v1"
            assert native.debug_cached_leader(key) == leader
            current, _ = native.debug_cache_stale_epoch(key)
            await db.put(key, b"v2")
            assert native.debug_cached_epoch(key) == current
            assert await db.get(key) == b"v2"

    run(scenario())


# -- exactly once ---------------------------------------------------------------------------


def test_a_retried_append_applies_once(db: tessera.Client) -> None:
    key = b"\x30once-sync"
    assert db._native.debug_append_resent(key, b"x") == (1, 1), "the resend returns the original result"
    assert db.append(key, b"y") == 2
    assert db.get(key) == b"xy"


def test_a_retried_append_applies_once_async(dev_cluster: DevCluster) -> None:
    key = b"\x30once-async"

    async def scenario() -> None:
        async with async_client(dev_cluster) as db:
            assert await db._native.debug_append_resent_async(key, b"x") == (1, 1)
            assert await db.append(key, b"y") == 2
            assert await db.get(key) == b"xy"

    run(scenario())


# -- limits ---------------------------------------------------------------------------------


def check_too_large(error: tessera.Error, cls: type, code: str, size: int, limit: int) -> None:
    assert type(error) is cls
    assert isinstance(error, tessera.InvalidArgument) and isinstance(error, ValueError)
    assert error.code == code
    assert (getattr(error, "size"), getattr(error, "limit")) == (size, limit)


def test_oversized_keys_and_values_are_rejected_with_their_classes(db: tessera.Client) -> None:
    key = PREFIX + b"limits"
    db.put(b"k" * MAX_KEY, b"the largest key")
    db.put(key, b"v" * MAX_VALUE)
    assert db.get(key) == b"v" * MAX_VALUE
    with pytest.raises(tessera.KeyTooLarge) as k:
        db.put(b"k" * (MAX_KEY + 1), b"v")
    check_too_large(k.value, tessera.KeyTooLarge, "KeyTooLarge", MAX_KEY + 1, MAX_KEY)
    with pytest.raises(tessera.KeyTooLarge):
        db.get(b"k" * (MAX_KEY + 1))
    with pytest.raises(tessera.ValueTooLarge) as v:
        db.put(key, b"v" * (MAX_VALUE + 1))
    check_too_large(v.value, tessera.ValueTooLarge, "ValueTooLarge", MAX_VALUE + 1, MAX_VALUE)
    with pytest.raises(tessera.ValueTooLarge):
        db.append(key, b"v")
    with pytest.raises(tessera.ValueTooLarge):
        db.batch_put([(key + b"2", b"ok"), (key + b"3", b"v" * (MAX_VALUE + 1))])
    assert db.get(key + b"2") is None, "a refused batch wrote nothing"
    assert db.get(key) == b"v" * MAX_VALUE, "the refused append left the value"


def test_oversized_keys_and_values_are_rejected_with_their_classes_async(dev_cluster: DevCluster) -> None:
    async def scenario() -> None:
        async with async_client(dev_cluster) as db:
            with pytest.raises(tessera.KeyTooLarge) as k:
                await db.get(b"k" * (MAX_KEY + 1))
            check_too_large(k.value, tessera.KeyTooLarge, "KeyTooLarge", MAX_KEY + 1, MAX_KEY)
            with pytest.raises(tessera.ValueTooLarge) as v:
                await db.put(PREFIX + b"limits-async", b"v" * (MAX_VALUE + 1))
            check_too_large(v.value, tessera.ValueTooLarge, "ValueTooLarge", MAX_VALUE + 1, MAX_VALUE)

    run(scenario())


def test_invalid_arguments_raise_invalid_argument(db: tessera.Client) -> None:
    with pytest.raises(tessera.InvalidArgument) as e:
        db.put(b"", b"v")
    assert e.value.code == "InvalidArgument"
    with pytest.raises(tessera.InvalidArgument):
        db.get(b"k", timeout=0)
    with pytest.raises(tessera.InvalidArgument):
        db.get(b"k", timeout=float("nan"))
    with pytest.raises(tessera.InvalidArgument, match="Config|cluster.addrs"):
        tessera.connect(data_dir="/nonexistent")


# -- the rest of the surface ----------------------------------------------------------------


def test_status_lists_nodes_and_regions(db: tessera.Client) -> None:
    status = db.status()
    assert [n.id for n in status.nodes] == [1, 2, 3]
    assert all(n.state == "up" for n in status.nodes)
    starts = sorted(r.start for r in status.regions)
    assert starts[0] == b"" and len(starts) >= 7
    assert all(len(r.voters) == 3 for r in status.regions)


def test_a_closed_client_refuses_calls(dev_cluster: DevCluster) -> None:
    db = dev_cluster.connect()
    with db:
        assert not db.closed
        db.put(PREFIX + b"closed", b"v")
    assert db.closed
    with pytest.raises(tessera.InvalidArgument, match="closed"):
        db.get(PREFIX + b"closed")
    db.close()

    async def scenario() -> Optional[bytes]:
        client = await tessera.aio.connect(data_dir=dev_cluster.data, timeout=5)
        value = await client.get(PREFIX + b"closed", timeout=2.5)
        await client.close()
        with pytest.raises(tessera.InvalidArgument):
            await client.get(PREFIX + b"closed")
        return value

    assert run(scenario()) == b"v"
