#!/usr/bin/env python
"""Measure atpflow's reliability and write docs/RELIABILITY.md (the README's 'Reliability').

    .venv/bin/python scripts/reliability.py                 # the full run (about 20 minutes)
    .venv/bin/python scripts/reliability.py --quick         # a smaller run (about 3 minutes)
    .venv/bin/python scripts/reliability.py --skip-memory   # faults only

What it does, on real processes (tests/faults/harness.py does the work):

1. Faults. A fresh local broker; a seeded synthetic fixture (`atpflow generate`) published at
   a steady pace while `atpflow run` (recovery on, several processes) is SIGKILLed at random
   points (the first kill in the first epoch, before any snapshot) and restarted at once each
   time, stopped once with SIGTERM and restarted, and the broker frozen (SIGSTOP, SIGCONT).
   Then the live outputs are compared with `atpflow replay` of the same fixture: the last
   record per key by version, the dead letters, and the final ATP cells and stream positions
   in the recovery store. Records lost, duplicates emitted, recovery times after each kill,
   and keys that briefly showed an older state are counted.
2. Memory. The availability graph in one process on generated movements over many keys,
   with a counting sink; resident memory is sampled as keys appear and as movements repeat
   over the same keys, giving bytes per key.

Writes the measured figures as JSON next to the report (`--json`), and the report itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# -- memory probe (runs in its own process) -------------------------------------------------------


def memory_probe(movements: int, keys: int, samples: int = 20) -> dict[str, Any]:
    """Availability graph over `keys` (sku, warehouse) cells, `movements` WMS movements."""
    import psutil
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    from dataflows.availability import build_availability_flow
    from dataflows.config import load_config
    from operators.records import RawRecord
    from schemas import codec

    config = load_config(environ={})
    proc = psutil.Process()
    whs = [("DC-ATL", "ATL1"), ("DC-DAL", "DAL1"), ("DC-RNO", "RNO1")]
    skus = (keys + len(whs) - 1) // len(whs)
    wms, items = codec("WmsInventoryTransaction"), codec("ItemMaster")
    t0 = 1_767_225_600_000
    every = max(1, movements // samples)
    points: list[dict[str, Any]] = []
    baseline = [0]
    # A fixed permutation of the keys (stride coprime with `keys`), so keys appear spread out
    # and each key's WMS sequence stays contiguous: round r gives every key its number r+1.
    stride = 7_919 if keys % 7_919 else 7_907

    def records() -> Any:
        baseline[0] = proc.memory_info().rss
        for s in range(skus):
            yield RawRecord("ref.items", 0, s, f"SKU-{s:07d}", items.encode({
                "sku": f"SKU-{s:07d}", "wms_item": f"ITM-{s:07d}", "erp_material": f"{s:018d}",
                "base_uom": "EA", "uom_factors": {"EA": 1, "CS": 12}, "active": True,
                "updated_at": t0}))
        for i in range(movements):
            k = (i * stride) % keys
            sku, (facility, _wh) = k // len(whs), whs[k % len(whs)]
            kind = ("RECEIPT", "SHIP", "PICK", "HOLD", "RELEASE_HOLD")[i // keys % 5]
            value = wms.encode({
                "txn_id": f"T{i}", "facility": facility, "item": f"ITM-{sku:07d}",
                "txn_type": kind, "qty": 1 + i % 7, "uom": "EA", "seq": i // keys + 1,
                "event_time": t0 + i, "order_ref": None})
            yield RawRecord("wms.inventory.transactions", 0, i, f"{facility}|ITM-{sku:07d}", value)
            if (i + 1) % every == 0:
                points.append({"movements": i + 1, "keys": min(keys, i + 1),
                               "rss": proc.memory_info().rss, "t": time.monotonic()})

    class Part(StatelessSourcePartition[RawRecord]):
        def __init__(self) -> None:
            self.it = records()

        def next_batch(self) -> list[RawRecord]:
            batch = [r for _, r in zip(range(2048), self.it, strict=False)]
            if not batch:
                raise StopIteration
            return batch

    class Source(DynamicSource[RawRecord]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    out = [0]

    class Count(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            out[0] += len(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Count:
            return Count()

    started = time.monotonic()
    run_main(build_availability_flow(config, Source(), Sink(), mode="replay"))
    final = proc.memory_info().rss
    full = [p for p in points if p["movements"] >= keys]
    first_full = full[0] if full else points[-1]
    return {
        "movements": movements, "keys": keys, "skus": skus, "outputs": out[0],
        "seconds": round(time.monotonic() - started, 1),
        "baseline_rss": baseline[0], "rss_at_all_keys": first_full["rss"], "final_rss": final,
        "bytes_per_key": round((first_full["rss"] - baseline[0]) / keys),
        "growth_after_all_keys": final - first_full["rss"],
        "points": points,
    }


# -- report ----------------------------------------------------------------------------------------


def _fmt_s(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"


def render(faults: dict[str, Any] | None, memory: dict[str, Any] | None, cmd: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        "## Reliability",
        "",
        f"Measured by `{cmd}` on {when} ({platform.machine()}, {os.cpu_count()} cores, "
        "local Tansu broker; rerun it to refresh this section). The quick part of the same "
        "suite runs in CI: `pytest -m faults` (tests/faults/, tests/test_hostile_input.py, "
        "tests/test_secrets_canary.py); the long part is `pytest -m \"faults and slow\"`.",
        "",
    ]
    if faults:
        p = faults["params"]
        kills = faults["kills"]
        first = [k["first_output_s"] for k in kills if k["first_output_s"] is not None]
        caught = [k["new_progress_s"] for k in kills if k["new_progress_s"] is not None]
        lost = faults["keys_wrong"] + faults["letters_missing"] + faults["cells_wrong"] \
            + faults["lag_after"]
        stale = faults["stale_seconds"]
        freeze = faults["freezes"][0] if faults["freezes"] else None
        graceful = faults["graceful"][0] if faults["graceful"] else None
        lines += [
            "| what | measured |",
            "| --- | --- |",
            f"| input | {faults['input_records']:,} records ({p['fixture']}), published over "
            f"{p['publish_seconds']:g} s; {p['processes']} process(es) x {p['workers']} worker(s), "
            f"snapshot every {p['snapshot_interval']:g} s |",
            f"| faults injected | {len(kills)} SIGKILLs of a worker process at random points "
            f"({sum(1 for k in kills if k['first_epoch'])} in the first epoch, before any "
            f"snapshot), each followed by an immediate restart"
            + (f"; 1 SIGTERM (exit codes {graceful['exit_codes']} after {graceful['seconds']} s, "
               f"{graceful['re_emitted_after_restart']} records re-emitted after the restart)"
               if graceful else "")
            + (f"; broker frozen {freeze['seconds']:g} s (SIGSTOP/SIGCONT): dataflow "
               f"{'kept running' if freeze['survived'] else 'exited and was restarted'}"
               if freeze else "") + " |",
            f"| records lost | **{lost}** ({faults['keys_wrong']} of {faults['keys']:,} keys wrong "
            f"against `atpflow replay`, {faults['letters_missing']} of "
            f"{faults['letters_expected']} dead letters missing, {faults['cells_wrong']} of "
            f"{faults['cells']:,} ATP cells different from the replay's final state, "
            f"{faults['lag_after']} input records unread) |",
            f"| duplicates emitted | {faults['duplicate_records']:,} of "
            f"{faults['output_records']:,} availability records repeat an earlier one "
            f"(same key, cause and value, newer version); {faults['letters_duplicated']} "
            "duplicate dead letters"
            + (f"; extra dead letters: {faults['letters_extra']}" if faults["letters_extra"]
               else "") + " |",
            f"| recovery time after a kill | first output of the restarted process: "
            f"{_fmt_s(first)}; first new result (caught up with new input): {_fmt_s(caught)} "
            f"({len(kills) - len(first)} kill(s) hit a process that had not written yet) |",
            f"| keys that briefly showed an older state | {faults['stale_keys']:,} of "
            f"{faults['keys']:,} keys, for {_fmt_s(stale)} (a resumed run re-emits what came "
            "after its last snapshot with newer versions; consumers see the older value until it "
            "catches up) |",
            f"| graceful stop | SIGTERM -> exit codes {faults['final_exit']} after "
            f"{faults['final_stop_seconds']:.1f} s |",
            f"| converged after input ended | {faults['converge_seconds']:.0f} s (gap timeout "
            f"{p['gap_timeout']:g} s, unknown-item timeout {p['unknown_item_timeout']:g} s) |",
        ]
        if faults["problems"]:
            lines += ["", "Problems found in this run:", ""]
            lines += [f"- {x}" for x in faults["problems"]]
    if memory:
        lines += [
            f"| memory per key | {memory['bytes_per_key']:,} bytes per (sku, warehouse) key: "
            f"{memory['movements']:,} movements over {memory['keys']:,} keys "
            f"({memory['skus']:,} skus), RSS {memory['baseline_rss'] / 2**20:,.0f} MiB before "
            f"input, {memory['rss_at_all_keys'] / 2**20:,.0f} MiB once every key existed, "
            f"{memory['final_rss'] / 2**20:,.0f} MiB at the end "
            f"({memory['growth_after_all_keys'] / 2**20:+,.0f} MiB while the remaining "
            "movements repeated over the same keys): memory follows live keys, not movements |",
        ]
    lines += [
        "",
        "How to read it: a kill loses nothing because input offsets and state are restored "
        "together from the last snapshot and every sink is idempotent (consumers apply a record "
        "only if its version is newer); the price is re-emitted records and a short window in "
        "which a key can show an older value. A crash loop faster than the snapshot interval "
        "plus the restart time makes no progress.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers (about 3 minutes)")
    parser.add_argument("--movements", type=int, default=None)
    parser.add_argument("--skus", type=int, default=None)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--freeze", type=float, default=30.0, help="broker freeze in seconds")
    parser.add_argument("--publish-seconds", type=float, default=None)
    parser.add_argument("--memory-movements", type=int, default=None)
    parser.add_argument("--memory-keys", type=int, default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/atpflow-reliability"))  # noqa: S108
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "RELIABILITY.md")
    parser.add_argument("--memory-probe", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only write the report from a reliability.json of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        args.out.write_text(render(data["faults"], data["memory"], data.get("command", "")))
        print(f"wrote {args.out}")
        return 0

    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return 0
    quick = args.quick
    movements = args.movements or (30_000 if quick else 200_000)
    skus = args.skus or (300 if quick else 2_000)
    publish_seconds = args.publish_seconds or (20.0 if quick else 90.0)
    mem_movements = args.memory_movements or (500_000 if quick else 5_000_000)
    mem_keys = args.memory_keys or (100_000 if quick else 1_000_000)
    args.work.mkdir(parents=True, exist_ok=True)
    cmd = "python scripts/reliability.py" + (" --quick" if quick else "")

    faults = None
    if not args.skip_faults:
        from dataflows.synthetic import Knobs, generate
        from tests.faults.harness import kill_scenario

        fixture = args.work / f"synthetic-{movements}.jsonl"
        if not fixture.exists():
            generate(Knobs(movements=movements, skus=skus, seed=42), fixture)
        import shutil

        shutil.rmtree(args.work / "faults", ignore_errors=True)
        print(f"faults: {movements:,} movements over {skus:,} skus, {args.kills} kills, "
              f"{args.processes} process(es), freeze {args.freeze:g} s", flush=True)
        result = kill_scenario(
            args.work / "faults", fixture, kills=args.kills, processes=args.processes,
            workers=args.workers, publish_seconds=publish_seconds,
            between_kills=(3.0, 8.0) if not quick else (2.0, 5.0), graceful_after_kill=3,
            freeze_seconds=args.freeze, gap_timeout=15.0, unknown_item_timeout=5.0,
            converge_timeout=600.0, seed=42, log=lambda m: print("  " + m, flush=True))
        faults = result.as_dict()
        # Kept at once: the memory phase that follows is long, and must not cost these figures.
        (args.work / "faults.json").write_text(json.dumps(faults, indent=1, default=str))
        print("faults: " + ("OK" if not result.problems else "PROBLEMS: "
                            + "; ".join(result.problems)), flush=True)
    memory = None
    if not args.skip_memory:
        print(f"memory: {mem_movements:,} movements over {mem_keys:,} keys", flush=True)
        probe = [sys.executable, __file__, "--memory-probe", str(mem_movements), str(mem_keys)]
        proc = subprocess.run(probe, capture_output=True, text=True, check=True, cwd=REPO)  # noqa: S603
        memory = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"memory: {memory['bytes_per_key']:,} bytes per key", flush=True)
    report = render(faults, memory, cmd)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    (args.work / "reliability.json").write_text(json.dumps(
        {"faults": faults, "memory": memory, "command": cmd}, indent=1, default=str))
    print(report)
    print(f"wrote {args.out} and {args.work / 'reliability.json'}")
    return 0 if not (faults and faults["problems"]) else 1


if __name__ == "__main__":
    sys.exit(main())
