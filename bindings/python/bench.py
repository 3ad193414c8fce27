"""Benchmark of the Python client against a dev cluster, next to the Rust client.

Measures, in one run against one cluster:
- sequential round-trip latency (p50/p99) of get and put: the Python sync client, the
  Python asyncio client, and the Rust client (examples/rust_latency.rs, built with the same
  profile as the extension);
- throughput of puts and gets with 64 asyncio tasks on one async client, and with 16
  threads on one sync client;
- the size of the release wheel (`maturin build --release`), if one is in target/wheels.

Usage, with the package and pytest installed in the running Python (the cluster is started
by the tests' conftest):

    python bench.py [--tessera PATH] [--rust-latency PATH] [--seconds 5]

It starts its own `tessera dev` (3 nodes, 4 regions) in a temporary directory and stops it
at the end. Numbers are only meaningful on an otherwise idle machine: it warns if cargo or
rustc is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The installed package, not the source tree beside this script (whose extension, if any, is
# whatever `maturin develop` last built).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "tests"))

import tessera  # noqa: E402
import tessera.aio  # noqa: E402
from conftest import DevCluster  # type: ignore[import-not-found]  # noqa: E402

VALUE = b"v" * 100
KEYS = [f"bench/py/{i:04}".encode() for i in range(100)]


def busy_compilers() -> List[str]:
    """Names of running cargo/rustc processes (a benchmark next to them is not valid)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("cargo", "rustc", "cc1", "ld", "maturin"):
            found.append(f"{name}({pid})")
    return found


def pct(samples: List[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def summary(samples_us: List[float]) -> Tuple[float, float]:
    return pct(samples_us, 0.50), pct(samples_us, 0.99)


def timed(op: Callable[[], object], n: int) -> List[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        op()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def python_sync_latency(db: tessera.Client, gets: int, puts: int) -> Dict[str, float]:
    it = iter(range(10**9))
    get = timed(lambda: db.get(KEYS[next(it) % 100]), gets)
    put = timed(lambda: db.put(KEYS[next(it) % 100], VALUE), puts)
    (g50, g99), (p50, p99) = summary(get), summary(put)
    return {"get_p50_us": g50, "get_p99_us": g99, "put_p50_us": p50, "put_p99_us": p99}


def python_async_latency(data: Path, gets: int, puts: int) -> Dict[str, float]:
    async def run() -> Dict[str, float]:
        async with tessera.aio.connect(data_dir=data) as db:
            get, put = [], []
            for i in range(gets):
                t = time.perf_counter()
                await db.get(KEYS[i % 100])
                get.append((time.perf_counter() - t) * 1e6)
            for i in range(puts):
                t = time.perf_counter()
                await db.put(KEYS[i % 100], VALUE)
                put.append((time.perf_counter() - t) * 1e6)
        (g50, g99), (p50, p99) = summary(get), summary(put)
        return {"get_p50_us": g50, "get_p99_us": g99, "put_p50_us": p50, "put_p99_us": p99}

    return asyncio.run(run())


def rust_latency(exe: str, data: Path, gets: int, puts: int) -> Dict[str, float]:
    pd = next(
        line.split("=", 1)[1].strip()
        for line in (data / "cluster.addrs").read_text().splitlines()
        if line.startswith("pd=")
    )
    out = subprocess.run([exe, pd, str(data / "certs"), str(gets), str(puts)], check=True, capture_output=True, text=True)
    result: Dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def async_throughput(data: Path, tasks: int, seconds: float, op: str) -> float:
    async def run() -> float:
        async with tessera.aio.connect(data_dir=data) as db:
            stop = time.perf_counter() + seconds
            done = 0

            async def worker(w: int) -> None:
                nonlocal done
                i = w
                while time.perf_counter() < stop:
                    key = KEYS[i % 100] + f"/{w}".encode()
                    if op == "put":
                        await db.put(key, VALUE)
                    else:
                        await db.get(key)
                    done += 1
                    i += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(tasks)))
            return done / (time.perf_counter() - start)

    return asyncio.run(run())


def thread_throughput(db: tessera.Client, threads: int, seconds: float, op: str) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop:
            key = KEYS[i % 100] + f"/{w}".encode()
            if op == "put":
                db.put(key, VALUE)
            else:
                db.get(key)
            counts[w] += 1
            i += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tessera", help="tessera binary (default: target/release, else target/debug)")
    parser.add_argument("--rust-latency", help="rust_latency example binary (default: target/release/examples)")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    if args.tessera:
        os.environ["TESSERA_BIN"] = args.tessera
    elif "TESSERA_BIN" not in os.environ and (ROOT / "target/release/tessera").is_file():
        os.environ["TESSERA_BIN"] = str(ROOT / "target/release/tessera")
    rust_exe = args.rust_latency or str(ROOT / "target/release/examples/rust_latency")

    busy = busy_compilers()
    if busy:
        print(f"warning: compilers running ({', '.join(busy)}): numbers are not valid", file=sys.stderr)

    results: Dict[str, object] = {
        "quiet_machine": not busy,
        "tessera_bin": os.environ.get("TESSERA_BIN", ""),
        "extension": tessera._native.__file__,
    }
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        cluster = DevCluster(Path(tmp) / "data")
        try:
            with cluster.connect() as db:
                db.batch_put([(k, VALUE) for k in KEYS])
                db.batch_put([(k + f"/{w}".encode(), VALUE) for k in KEYS for w in range(64)])
                # Warm-up: connections to every node, routes cached.
                for k in KEYS:
                    db.get(k)
                lat: Dict[str, Dict[str, float]] = {}
                # Interleaved, twice each, keeping the better run: the machine is shared.
                for _ in range(2):
                    runs: List[Tuple[str, Callable[[], Dict[str, float]]]] = [
                        ("python sync", lambda: python_sync_latency(db, args.gets, args.puts)),
                        ("python asyncio", lambda: python_async_latency(cluster.data, args.gets, args.puts)),
                        ("rust", lambda: rust_latency(rust_exe, cluster.data, args.gets, args.puts)),
                    ]
                    for name, measure in runs:
                        r = measure()
                        if name not in lat or r["get_p50_us"] < lat[name]["get_p50_us"]:
                            lat[name] = r
                results["latency_us"] = lat
                tput = {
                    "asyncio 64 tasks, puts/s": async_throughput(cluster.data, 64, args.seconds, "put"),
                    "asyncio 64 tasks, gets/s": async_throughput(cluster.data, 64, args.seconds, "get"),
                    "16 threads, puts/s": thread_throughput(db, 16, args.seconds, "put"),
                    "16 threads, gets/s": thread_throughput(db, 16, args.seconds, "get"),
                }
                results["throughput"] = tput
        finally:
            cluster.stop()

    wheels = sorted((ROOT / "target" / "wheels").glob("tessera_client-*.whl"))
    if wheels:
        results["wheel"] = {"file": wheels[-1].name, "bytes": wheels[-1].stat().st_size}

    print(f"machine quiet (no cargo/rustc running at start): {results['quiet_machine']}")
    print(f"server: {results['tessera_bin']}")
    print(f"extension: {results['extension']}")
    print("\n| client | get p50 | get p99 | put p50 | put p99 |\n|---|---:|---:|---:|---:|")
    for name, r in lat.items():
        print(
            f"| {name} | {r['get_p50_us'] / 1000:.3f} ms | {r['get_p99_us'] / 1000:.3f} ms "
            f"| {r['put_p50_us'] / 1000:.3f} ms | {r['put_p99_us'] / 1000:.3f} ms |"
        )
    print("\n| throughput | ops/s |\n|---|---:|")
    for name, v in tput.items():
        print(f"| {name} | {v:,.0f} |")
    if "wheel" in results:
        w = results["wheel"]
        assert isinstance(w, dict)
        print(f"\nwheel: {w['file']}, {w['bytes'] / 1024 / 1024:.2f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
