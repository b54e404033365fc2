"""Load test of `sinks.serve`: requests/s and latency percentiles, from a separate process.

Seeds the Redis view (its own key prefix, deleted afterwards), starts `serve()` in a child
process on a free port of 127.0.0.1, then drives it from separate load processes (each with a few
threads of keep-alive clients) for a bounded time, and prints one line per scenario:

    python tests/benchmarks/bench_serve.py [--duration 10] [--processes 2] [--threads 4]

(The load runs in processes of synchronous clients: on a small machine an asyncio client in one
process saturates its own core long before the server does.)

Only loopback traffic; every loop is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sinks.redis_view import RedisViewWriter  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(client: redis.Redis, prefix: str, keys: int) -> list[str]:
    writer = RedisViewWriter(client, prefix=prefix, batch_size=1000)
    skus = [f"SKU-{n:06d}" for n in range(keys)]
    for n, sku in enumerate(skus):
        for wh in ("ATL1", "DAL1"):
            writer.add(
                {
                    "channel": "shopify-us",
                    "sku": sku,
                    "location": wh,
                    "available": n % 50,
                    "previous": None,
                    "version": 1,
                    "as_of": 1767225600000,
                    "source": "wms",
                    "source_id": f"T{n}",
                    "warehouses": [
                        {
                            "warehouse": wh,
                            "on_hand": n % 50 + 2,
                            "on_hold": 0,
                            "reserved": 0,
                            "incoming": 0,
                            "atp": n % 50 + 2,
                            "erp_book": None,
                        }
                    ],
                }
            )
    report = writer.flush()
    assert report.pending == 0, report
    return skus


def _start_server(port: int, prefix: str, redis_url: str) -> subprocess.Popen[bytes]:
    code = (
        "from sinks.serve import serve; "
        f"serve({{'port': {port}, 'redis_prefix': {prefix!r}, "
        f"'redis_url': {redis_url!r}, 'log_level': 'error'}})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)  # noqa: S603 - our own code
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("serve did not start")


def _load_process(
    base: str, paths: list[str], duration: float, threads: int, seed: int, out: object
) -> None:
    """One load process: ``threads`` keep-alive clients on random ``paths`` for ``duration`` s."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + duration

    def worker(n: int) -> None:
        rng = random.Random(seed * 100 + n)  # noqa: S311 - load pattern
        mine: list[float] = []
        failed = 0
        with httpx.Client(base_url=base, timeout=5.0) as client:
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    ok = client.get(rng.choice(paths)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - started)
                failed += 0 if ok else 1
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((latencies, errors[0]))  # type: ignore[attr-defined]


def _drive(
    base: str, paths: list[str], duration: float, processes: int, threads: int
) -> tuple[list[float], int]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_load_process, args=(base, paths, duration, threads, i, results))
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        lat, err = results.get(timeout=duration + 60)
        latencies.extend(lat)
        errors += err
    for proc in procs:
        proc.join(timeout=10)
    return latencies, errors


def _report(name: str, latencies: list[float], errors: int, duration: float) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{name:<28} requests={len(ordered):>7} rps={len(ordered) / duration:>8.1f} "
        f"p50={p50:6.2f}ms p99={p99:6.2f}ms errors={errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--processes", type=int, default=2, help="load processes")
    parser.add_argument("--threads", type=int, default=4, help="clients per load process")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    prefix = f"atpflow-bench-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    proc = None
    try:
        skus = _seed(client, prefix, args.keys)
        proc = _start_server(port, prefix, args.redis_url)
        base = f"http://127.0.0.1:{port}"
        rng = random.Random(1)  # noqa: S311 - load pattern
        scenarios = {
            "single sku": [f"/v1/availability/shopify-us/{s}" for s in skus],
            "single sku + location": [
                f"/v1/availability/shopify-us/{s}?location=ATL1" for s in skus
            ],
            "batch of 20 skus": [
                "/v1/availability/shopify-us?" + "&".join(f"sku={s}" for s in rng.sample(skus, 20))
                for _ in range(500)
            ],
        }
        print(
            f"serve on {base} (one uvicorn process), {len(skus)} skus x 2 locations, "
            f"{args.processes} load processes x {args.threads} clients, "
            f"{args.duration:g}s per scenario"
        )
        for name, paths in scenarios.items():
            latencies, errors = _drive(base, paths, args.duration, args.processes, args.threads)
            _report(name, latencies, errors, args.duration)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


if __name__ == "__main__":
    main()
