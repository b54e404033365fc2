"""Replay throughput and peak memory on seeded synthetic data (not part of the test run).

    .venv/bin/python tests/benchmarks/bench_replay.py [--movements 1000000] [--skus 10000]

Generates the fixture once per size, then replays it in a fresh process per measurement and
reads that process's peak RSS. Two sizes over the same SKUs show whether memory grows with
the number of unique event ids (it must not, beyond the reorder buffers).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _atpflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=True)


def measure(movements: int, skus: int, tmp: Path) -> dict:
    fixture = tmp / f"synthetic-{movements}-{skus}.jsonl"
    if not fixture.exists():
        _atpflow("generate", "--out", str(fixture), "--movements", str(movements), "--skus", str(skus),
                 "--seed", "1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    proc = _atpflow("replay", "--flow", "availability", "--json", "--out", str(tmp / "out"), str(fixture))
    wall = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(proc.stdout)
    records = sum(summary["records_in"].values())
    return {
        "movements": movements, "skus": skus, "records_in": records,
        "accounted": summary["accounted"], "seconds": round(wall, 1),
        "records_per_s": round(records / wall), "peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--movements", type=int, default=1_000_000)
    p.add_argument("--skus", type=int, default=10_000)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"{__import__('os').cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory(prefix="atpflow-bench-") as tmp:
        # Smaller first: RUSAGE_CHILDREN keeps the maximum over all children so far.
        for n in (args.movements // 4, args.movements):
            row = measure(n, args.skus, Path(tmp))
            rows.append(row)
            print(json.dumps(row))
    print("\n| movements | SKUs | records in | accounted | seconds | records/s | peak RSS (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['movements']:,} | {r['skus']:,} | {r['records_in']:,} | {r['accounted']:,} | "
              f"{r['seconds']} | {r['records_per_s']:,} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
