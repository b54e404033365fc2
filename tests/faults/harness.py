"""Fault-injection harness: real processes, a real broker, real recovery files.

Shared by the `faults` tests (tests/faults/) and `scripts/reliability.py`.
Everything started here is started in its own session and stopped by its own
pid (never by name, never a whole group that we did not create).

The pieces:

- `write_config`: a config file for one broker, with short timeouts and recovery.
- `Cluster`: `atpflow run` as one or several processes (`-i/-a`), each of which
  starts `python -m bytewax.run`; `kill_worker()` SIGKILLs a Bytewax process,
  `terminate()` sends SIGTERM and times the exit.
- `publish`, `read_availability`, `read_dead_letters`: the topics as a consumer sees them.
- `replay_outputs`: what `atpflow replay` makes of the same fixture.
- `compare`: the verdict of a live run against the replay (last `available` per key
  by version, dead letters complete).
- `project_states`: the ATP cells in a recovery store's newest snapshot, so that a
  run's final state can be compared exactly (a lost or doubly applied movement shows).
- `stale_episodes`: keys that briefly showed an older state after a resume.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = REPO / "config" / "atpflow.yaml"
ATPFLOW = [sys.executable, "-m", "dataflows.cli"]

__all__ = [
    "REPO",
    "Cluster",
    "Verdict",
    "cli",
    "compare",
    "free_port",
    "letter_identity",
    "project_states",
    "publish",
    "read_availability",
    "read_dead_letters",
    "replay_outputs",
    "stale_episodes",
    "wait_for",
    "write_config",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run `atpflow ARGS` in a subprocess (cwd = the repository)."""
    return subprocess.run([*ATPFLOW, *args], capture_output=True, text=True, check=check,
                          timeout=timeout, cwd=REPO, env=env)


def wait_for(check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def write_config(
    path: Path,
    bootstrap: str,
    *,
    recovery_dir: Path | None = None,
    snapshot_interval: float = 1.0,
    gap_timeout: float = 8.0,
    unknown_item_timeout: float = 8.0,
    partitions: int = 3,
    metrics_port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The sample config pointed at `bootstrap`, with test timeouts and recovery."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["kafka"]["bootstrap_servers"] = bootstrap
    raw["kafka"]["partitions"] = partitions
    raw["reference"] = {"locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
                        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml")}
    raw.update(gap_timeout=f"{gap_timeout}s", unknown_item_timeout=f"{unknown_item_timeout}s")
    raw["recovery"] = {"dir": str(recovery_dir) if recovery_dir else None,
                       "snapshot_interval": f"{snapshot_interval}s"}
    if metrics_port is not None:
        raw["metrics_port"] = metrics_port
    for k, v in (extra or {}).items():
        raw[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL: when, which pid, and how far the output had got."""

    at: float  # wall-clock epoch seconds
    pid: int
    #: epoch ms of the next output record written by a resumed process (filled in later)
    first_output_after_ms: int | None = None
    snapshots_before: int = 0


@dataclass
class Cluster:
    """`atpflow run` as `processes` processes of `workers` worker threads each.

    The harness plays the part of a supervisor (Kubernetes): `restart()` starts
    every process again with the same arguments. A process is `atpflow run`
    (the wrapper) whose child is `python -m bytewax.run` (the worker process).
    """

    config_path: Path
    log_dir: Path
    flow: str = "availability"
    processes: int = 1
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    stop_at_eof: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    starts: int = 0
    kills: list[Kill] = field(default_factory=list)

    def _cmd(self, index: int, addresses: str | None) -> list[str]:
        cmd = [*ATPFLOW, "run", "--config", str(self.config_path), "--flow", self.flow,
               "-w", str(self.workers)]
        if addresses:
            cmd += ["-i", str(index), "-a", addresses]
        if self.stop_at_eof:
            cmd.append("--stop-at-eof")
        return cmd

    def start(self) -> Cluster:
        if self.running():
            msg = "the cluster is already running"
            raise RuntimeError(msg)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        addresses = None
        if self.processes > 1:
            addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(self.processes))
        env = {**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "false", **self.env}
        self.procs = []
        self.starts += 1
        for i in range(self.processes):
            log = open(self.log_dir / f"run-{self.starts:02d}-p{i}.log", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                self._cmd(i, addresses), stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=REPO, start_new_session=True,
            ))
            log.close()
        return self

    restart = start

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def worker_pids(self, timeout: float = 20.0) -> list[int]:
        """Pids of the `bytewax.run` processes (children of each `atpflow run`)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = []
            for p in self.procs:
                try:
                    kids = psutil.Process(p.pid).children()
                except psutil.NoSuchProcess:
                    kids = []
                pids += [k.pid for k in kids if "bytewax.run" in " ".join(k.cmdline())]
            if len(pids) >= len(self.procs) or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)

    def kill_worker(self, which: int = 0) -> Kill:
        """SIGKILL one Bytewax worker process (by pid); the cluster then exits non-zero."""
        pids = self.worker_pids()
        if not pids:
            msg = f"no worker process to kill: {self.log_tail()}"
            raise RuntimeError(msg)
        pid = pids[which % len(pids)]
        kill = Kill(time.time(), pid)
        os.kill(pid, signal.SIGKILL)
        self.kills.append(kill)
        return kill

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes after up to `timeout` seconds (None: still running)."""
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes

    def terminate(self, timeout: float = 15.0) -> tuple[list[int | None], float]:
        """SIGTERM every `atpflow run` (as Kubernetes does); exit codes and seconds taken."""
        started = time.monotonic()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = self.wait(timeout)
        return codes, time.monotonic() - started

    def stop(self) -> None:
        """Make sure nothing we started is left: SIGTERM, then SIGKILL, by pid."""
        pids = self.worker_pids(timeout=0)
        if self.running():
            self.terminate(10.0)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for pid in pids:  # a worker orphaned by a killed wrapper
            try:
                proc = psutil.Process(pid)
                if "bytewax.run" in " ".join(proc.cmdline()):
                    proc.kill()
            except psutil.NoSuchProcess:
                pass

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}"
                         for p in sorted(self.log_dir.glob("run-*.log")))

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]


# -- topics -------------------------------------------------------------------------------------


def publish(config: Any, fixture: Path, *, limit: int | None = None, skip: int = 0) -> int:
    """Produce fixture lines [skip, skip+limit) to their topics; returns how many."""
    from dataflows.fixtures import read_fixture, topic_schemas
    from sinks.kafka import CheckedProducer

    n = 0
    with CheckedProducer(config.kafka) as producer:
        for i, raw in enumerate(read_fixture(fixture, topic_schemas(config))):
            if i < skip:
                continue
            if limit is not None and n >= limit:
                break
            producer.send(raw.topic, raw.key, raw.value, headers=raw.headers)
            n += 1
    return n


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: str
    partition: int
    offset: int
    timestamp: int  # broker/producer timestamp, epoch ms
    value: dict[str, Any]


def read_availability(config: Any) -> list[OutRecord]:
    """Every availability record on every channel topic, in (topic, partition, offset) order."""
    from schemas import codec
    from sinks.kafka import iter_records

    topics = [config.topics.availability(c.id) for c in config.channels.channels]
    dec = codec("AvailabilityRecord").decode
    out = [OutRecord(r.topic, r.key or "", r.partition or 0, r.offset or 0, r.timestamp or 0,
                     dec(r.value))
           for r in iter_records(config.kafka, topics)]
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    return out


def read_dead_letters(config: Any) -> list[dict[str, Any]]:
    from schemas import codec
    from sinks.kafka import iter_records

    dec = codec("DeadLetter").decode
    return [dec(r.value) for r in iter_records(config.kafka, [config.topics.dead_letter])]


def last_available(records: Iterable[OutRecord]) -> dict[tuple[str, str], int]:
    """(topic, key) -> `available` of the highest version (what every consumer converges on)."""
    best: dict[tuple[str, str], tuple[int, int]] = {}
    for r in records:
        k = (r.topic, r.key)
        v = r.value["version"]
        if k not in best or v > best[k][0]:
            best[k] = (v, r.value["available"])
    return {k: a for k, (_, a) in best.items()}


def replay_outputs(config_path: Path, fixture: Path, out_dir: Path,
                   ) -> tuple[dict[tuple[str, str], int], list[dict[str, Any]], dict[str, Any]]:
    """`atpflow replay` of the fixture: last available per key, dead letters, summary."""
    proc = cli("replay", "--config", str(config_path), "--flow", "availability", "--json",
               "--out", str(out_dir), str(fixture))
    summary = json.loads(proc.stdout)
    last: dict[tuple[str, str], int] = {}
    letters: list[dict[str, Any]] = []
    for path in sorted(out_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                o = json.loads(line)
                if path.stem.startswith("availability."):
                    last[(path.stem, o["key"])] = o["value"]["available"]
                elif path.stem.endswith("dead-letter"):
                    v = o["value"]
                    if v.get("value") is not None:
                        v["value"] = base64.b64decode(v["value"])
                    letters.append(v)
    return last, letters, summary


def letter_identity(dl: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a dead letter across replay and live (offsets differ)."""
    if dl["reason"] == "SEQUENCE_GAP":
        g = dl["gap"]
        return ("SEQUENCE_GAP", g["stream"], g["missing_from"], g["missing_to"])
    if dl["reason"] == "UNDECODABLE":
        return ("UNDECODABLE", dl["key"], dl["topic"], bytes(dl["value"] or b""))
    return (dl["reason"], dl["key"], dl["topic"], dl["source_id"])


@dataclass
class Verdict:
    """A live run against the replay of the same input."""

    keys: int
    wrong: dict[tuple[str, str], tuple[int | None, int]]  # key -> (live, replay)
    letters_expected: int
    letters_missing: Counter[tuple[Any, ...]]
    letters_extra: Counter[tuple[Any, ...]]
    letters_duplicated: int

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.letters_missing

    def describe(self) -> str:
        lines = [f"{self.keys} keys, {len(self.wrong)} wrong; {self.letters_expected} dead letters "
                 f"expected, {sum(self.letters_missing.values())} missing, "
                 f"{self.letters_duplicated} duplicated, {sum(self.letters_extra.values())} extra"]
        lines += [f"  wrong {k}: live {v[0]} replay {v[1]}" for k, v in list(self.wrong.items())[:10]]
        lines += [f"  missing {k}" for k in list(self.letters_missing)[:10]]
        lines += [f"  extra {k}" for k in list(self.letters_extra)[:10]]
        return "\n".join(lines)


def compare(live: dict[tuple[str, str], int], live_letters: list[dict[str, Any]],
            expected: dict[tuple[str, str], int], expected_letters: list[dict[str, Any]]) -> Verdict:
    wrong = {k: (live.get(k), v) for k, v in expected.items() if live.get(k) != v}
    wrong.update({k: (v, -1) for k, v in live.items() if k not in expected})
    have = Counter(letter_identity(d) for d in live_letters)
    want = Counter(letter_identity(d) for d in expected_letters)
    missing = want - have
    extra = Counter({k: n for k, n in have.items() if k not in want})
    duplicated = sum(n - want[k] for k, n in have.items() if k in want and n > want[k])
    return Verdict(len(expected), wrong, sum(want.values()), missing, extra, duplicated)


# -- recovery state -----------------------------------------------------------------------------


def snapshot_count(recovery_dir: Path) -> int:
    """Epochs snapshotted so far (distinct snap_epoch values over all partitions)."""
    epochs: set[int] = set()
    for path in Path(recovery_dir).glob("part-*.sqlite3"):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            epochs.update(e for (e,) in con.execute("SELECT DISTINCT snap_epoch FROM snaps"))
        except sqlite3.OperationalError:
            pass
        finally:
            con.close()
    return len(epochs)


def _newest_snaps(recovery_dir: Path, step_suffix: str) -> Iterator[Any]:
    newest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    for path in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            for step, key, epoch, blob in con.execute(
                    "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps"):
                if not step.endswith(step_suffix):
                    continue
                if (step, key) not in newest or newest[(step, key)][0] < epoch:
                    newest[(step, key)] = (epoch, blob)
        finally:
            con.close()
    for _epoch, blob in newest.values():
        if blob is not None:
            yield pickle.loads(blob)  # noqa: S301 - our own recovery files


def project_states(recovery_dir: Path) -> dict[str, dict[str, tuple[Any, ...]]]:
    """sku -> warehouse -> (on_hand, on_hold, reserved, incoming, erp_book) from the newest snapshot."""
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for shard in _newest_snaps(recovery_dir, ".project"):
        for sku, st in shard.items():
            out[sku] = {wh: (c.on_hand, c.on_hold, c.reserved, c.incoming, c.erp_book)
                        for wh, c in st.cells.items()}
    return out


def sequence_states(recovery_dir: Path) -> dict[str, tuple[int, int]]:
    """stream -> (next_seq, buffered) from the newest snapshot."""
    out: dict[str, tuple[int, int]] = {}
    for shard in _newest_snaps(recovery_dir, ".sequence"):
        for stream, st in shard.items():
            out[stream] = (st.next_seq, len(st.buffer))
    return out


# -- what consumers saw after a resume -----------------------------------------------------------


@dataclass
class StaleReport:
    """Keys whose consumer view went back to an older value while a resumed run caught up."""

    keys: int
    episodes: list[tuple[str, str, float]]  # (topic, key, seconds)

    @property
    def stale_keys(self) -> int:
        return len({(t, k) for t, k, _ in self.episodes})

    def seconds(self) -> list[float]:
        return [s for _, _, s in self.episodes]


def stale_episodes(records: list[OutRecord]) -> StaleReport:
    """Per key, in the order consumers read it: re-emissions of already-applied movements.

    A resumed run recomputes what came after its last snapshot, with new (higher)
    versions, so a consumer's view of a key can go back to a value it had before the
    crash. An episode starts when a record caused by a movement already seen for the key
    changes the view away from the last value before it, and ends when the key shows
    the movement it had reached before (same cause, same value) or a new movement.
    The duration is the difference of the records' timestamps.
    """
    by_key: dict[tuple[str, str], list[OutRecord]] = defaultdict(list)
    for r in records:
        by_key[(r.topic, r.key)].append(r)
    episodes = []
    for (topic, key), recs in by_key.items():
        recs.sort(key=lambda r: r.offset)  # one key lives in one partition
        seen: set[str] = set()
        prev: tuple[str, int] | None = None  # (cause, value) of the record before
        reached: tuple[str, int] | None = None  # where the key was when re-emissions began
        start: int | None = None
        for r in recs:
            cause = f"{r.value['source']}:{r.value['source_id']}"
            value = r.value["available"]
            if cause in seen:
                if reached is None:
                    reached = prev
                if reached is not None:
                    if (cause, value) == reached:  # caught up
                        if start is not None:
                            episodes.append((topic, key, (r.timestamp - start) / 1000))
                        start, reached = None, None
                    elif start is None and value != reached[1]:
                        start = r.timestamp
            else:
                if start is not None:
                    episodes.append((topic, key, (r.timestamp - start) / 1000))
                start, reached = None, None
                seen.add(cause)
            prev = (cause, value)
        if start is not None:  # never caught up in what was read: count to the last record
            episodes.append((topic, key, (recs[-1].timestamp - start) / 1000))
    return StaleReport(len(by_key), episodes)
