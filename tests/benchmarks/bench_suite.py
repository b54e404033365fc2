"""atpflow benchmark suite (issue 8): one command, one table, one JSON file.

    .venv/bin/python tests/benchmarks/bench_suite.py                      # the full suite
    .venv/bin/python tests/benchmarks/bench_suite.py --movements 20000 --repeat 1 --streams 30000

Not part of the test run (pytest collects `test_*.py` only). See docs/BENCHMARKS.md for what each
measurement means. In one run, on the same seeded data (`atpflow generate`) and a fresh local
Tansu broker per measurement, it measures:

- ceiling: a plain confluent-kafka consumer (assign(), every partition) that reads and
  Avro-decodes the input topics with fastavro (the issue's reference; ratios are against it),
  and the same consumer with atpflow's compiled decoder (`ceiling-compiled`);
- live: `atpflow run --flow availability --stop-at-eof` (all channels of the sample config,
  dead letters, metrics endpoint on) with 1 and 2 processes, recovery off and on;
- replay: `atpflow replay --flow availability`;
- units: the job's step logic called directly, no engine and no Kafka (a floor for the live
  job), with a per-stage breakdown;
- latency at fixed offered rates: the live job with a paced producer, next to the broker's own
  produce-to-consume latency (paced producer, plain consumer);
- memory: peak RSS of every job process, and bytes per stream with ~1,000,000 live streams;
- time to the first output record.

Every live output is checked against replay (the last record per key by version must carry
replay's quantity): a benchmark of a wrong answer is worthless, so a failed check is shown in the
table and makes the command exit 1.

Internal roles (`--role ceiling|tail|units`) run the plain consumers and the step logic in their
own processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

PY = sys.executable
FLOW = "availability"
#: The producer settings of every preload and paced producer (atpflow publish uses linger 5 ms).
PRODUCER = {
    "linger.ms": 5,
    "enable.idempotence": True,
    "acks": "all",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
}
#: Consumer settings shared by the ceiling, the broker-latency consumer and the output readers.
#: fetch.wait.max.ms 100 as in KafkaRawSource (Tansu answers a fetch only when it expires).
CONSUMER = {
    "group.id": "atpflow-bench",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
}
#: Dead-letter reasons that depend on a timer (gap_timeout, unknown_item_timeout): a live run
#: that stops at the end of its input has not waited them out, replay settles them at the end.
TIMER_REASONS = {"SEQUENCE_GAP", "UNKNOWN_ITEM"}


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# -- machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import bytewax  # noqa: F401  (version via metadata)

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "bytewax": version("bytewax"),
        "confluent_kafka": version("confluent-kafka"),
        "platform": platform.platform(),
        "load_avg": list(os.getloadavg()),
    }


# -- processes -------------------------------------------------------------------------------


#: A minimal launcher (no site, only os/sys/signal: ~10 MiB) that forks the measured command,
#: forwards SIGTERM/SIGINT to it, and writes the command's ru_maxrss and CPU seconds (user +
#: system, its waited-for children included) from wait4 to a file.
#: Why not wait4 on our own child: Linux keeps the larger of a process's peak RSS before and
#: after exec(), and a child forked from this (large) benchmark process starts with our RSS as
#: its peak; forked from the small launcher, the floor is the launcher's ~10 MiB.
LAUNCHER = """
import os, signal, sys
out, cmd = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as fh:
    fh.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


#: Every process started, so that an interrupted run stops what is still running.
_CHILDREN: list[Child] = []


@dataclass
class Child:
    """A process we started (in its own session, through LAUNCHER), with its peak RSS."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    rss_path: Path
    started: float  # epoch seconds
    ended: float | None = None
    code: int | None = None
    maxrss_kib: int | None = None
    cpu_s: float | None = None

    @classmethod
    def start(
        cls,
        cmd: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        started: float | None = None,
        stdout: Any = None,
    ) -> Child:
        fh = open(log_path, "wb")  # noqa: SIM115 - closed by the child's lifetime
        rss_path = log_path.with_suffix(".maxrss")
        rss_path.unlink(missing_ok=True)
        t0 = time.time() if started is None else started
        proc = subprocess.Popen(  # noqa: S603 - our own commands
            [PY, "-S", "-c", LAUNCHER, str(rss_path), *cmd],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else fh,
            stderr=fh if stdout is not None else subprocess.STDOUT,
            start_new_session=True,
        )
        fh.close()
        child = cls(proc, log_path, rss_path, t0)
        _CHILDREN.append(child)
        return child

    def poll(self) -> bool:
        """True once the process has ended (and its peak RSS is known)."""
        if self.code is not None:
            return True
        if self.proc.poll() is None:
            return False
        self.ended = time.time()
        self.code = self.proc.returncode
        # ru_maxrss of the command and of the children it waited for (`atpflow run` waits
        # for its `python -m bytewax.run`): the job's own peak.
        with contextlib.suppress(OSError, ValueError):
            rss, cpu = self.rss_path.read_text().split()
            self.maxrss_kib, self.cpu_s = int(rss), float(cpu)
        return True

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll():
                return True
            time.sleep(0.05)
        return self.poll()

    def stop(self) -> None:
        """SIGTERM (atpflow run forwards it and drains), then SIGKILL its own session group."""
        if self.poll():
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        if self.wait(15):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the session we started
        self.wait(10)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


# -- data ------------------------------------------------------------------------------------


@dataclass
class Wire:
    """A fixture Avro-encoded once, with its partition computed: (topic, partition, key, value)."""

    path: Path
    counts: Counter[str]
    items: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def chunks(self) -> Iterator[list[tuple[str, int, bytes | None, bytes | None]]]:
        with open(self.path, "rb") as fh:
            while True:
                try:
                    yield pickle.load(fh)  # noqa: S301 - our own file
                except EOFError:
                    return

    def records(
        self, topics: set[str] | None = None
    ) -> Iterator[tuple[str, int, bytes | None, bytes | None]]:
        for chunk in self.chunks():
            for rec in chunk:
                if topics is None or rec[0] in topics:
                    yield rec


def encode_fixture(config: Any, fixture: Path, out: Path) -> Wire:
    from dataflows.fixtures import read_fixture, topic_schemas
    from sinks.kafka import key_partition, topic_specs

    parts = {s.name: s.partitions for s in topic_specs(config)}
    counts: Counter[str] = Counter()
    chunk: list[tuple[str, int, bytes | None, bytes | None]] = []
    with open(out, "wb") as fh:
        for raw in read_fixture(fixture, topic_schemas(config)):
            if raw.headers:
                msg = f"{fixture}: headers are not supported by the benchmark publisher"
                raise ValueError(msg)
            key = raw.key.encode() if raw.key is not None else None
            part = key_partition(key, parts[raw.topic]) if key is not None else 0
            chunk.append((raw.topic, part, key, raw.value))
            counts[raw.topic] += 1
            if len(chunk) == 20_000:
                pickle.dump(chunk, fh, protocol=pickle.HIGHEST_PROTOCOL)
                chunk = []
        if chunk:
            pickle.dump(chunk, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return Wire(out, counts, counts.get(config.topics.items, 0))


def atpflow(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run an `atpflow` command (this checkout, this interpreter) to completion."""
    cmd = [PY, "-m", "dataflows.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=clean_env())  # noqa: S603


def generate(out: Path, movements: int, skus: int, seed: int, gaps: float) -> None:
    atpflow(
        "generate",
        "--out",
        str(out),
        "--movements",
        str(movements),
        "--skus",
        str(skus),
        "--seed",
        str(seed),
        "--gaps",
        str(gaps),
    )


def item_skus(fixture: Path, items_topic: str) -> dict[str, str]:
    """WMS item and ERP material code -> sku, from the fixture's item master lines."""
    out: dict[str, str] = {}
    with open(fixture, encoding="utf-8") as fh:
        for text in fh:
            if items_topic not in text[:40]:
                continue
            line = json.loads(text)
            v = line.get("value")
            if line["topic"] == items_topic and v:
                out[v["wms_item"]] = v["sku"]
                out[v["erp_material"]] = v["sku"]
    return out


# -- broker and config -----------------------------------------------------------------------


class Env:
    """A fresh broker, a config file pointing at it, and its topics."""

    def __init__(self, work: Path, name: str, *, recovery: bool = False) -> None:
        from dataflows.broker import LocalBroker

        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker = LocalBroker(log_path=self.dir / "tansu.log")
        self.recovery = recovery

    def __enter__(self) -> Env:
        from dataflows.config import SAMPLE_CONFIG, load_config
        from sinks.kafka import create_topics

        self.broker.start()
        raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
        raw["kafka"]["bootstrap_servers"] = self.broker.bootstrap
        raw["reference"] = {
            "locations": str(SAMPLE_CONFIG.parent / raw["reference"]["locations"]),
            "channels": str(SAMPLE_CONFIG.parent / raw["reference"]["channels"]),
        }
        if self.recovery:
            raw["recovery"] = {**(raw.get("recovery") or {}), "dir": str(self.dir / "recovery")}
        self.config_path = self.dir / "atpflow.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        self.config = load_config(self.config_path, environ={})
        create_topics(self.config)
        if self.recovery:
            atpflow("recovery", "init", "--config", str(self.config_path), "--flow", FLOW)
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def input_topics(self) -> list[str]:
        from dataflows.availability import input_topics

        return input_topics(self.config)

    @property
    def output_topics(self) -> list[str]:
        t = self.config.topics
        return [*(t.availability(c.id) for c in self.config.channels.channels), t.dead_letter]


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without ATPFLOW__ overrides (the config file is the whole truth)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATPFLOW__")}
    env.update(extra)
    return env


class Failures:
    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.count += 1
            self.first = self.first or err.str()


def _produce(p: Producer, rec: tuple[str, int, bytes | None, bytes | None], cb: Failures) -> None:
    topic, part, key, value = rec
    while True:
        try:
            p.produce(topic, value, key, partition=part, on_delivery=cb)
            return
        except BufferError:
            p.poll(0.05)


def _flush(p: Producer, cb: Failures, what: str) -> None:
    left = p.flush(120)
    if left or cb.count:
        msg = f"{what}: {left} unacknowledged, {cb.count} failed ({cb.first})"
        raise RuntimeError(msg)


def preload(bootstrap: str, records: Iterable[tuple[str, int, bytes | None, bytes | None]]) -> int:
    """Produce as fast as the broker takes them; returns the number sent."""
    p = Producer({"bootstrap.servers": bootstrap, **PRODUCER, "linger.ms": 20})
    cb, n = Failures(), 0
    for rec in records:
        _produce(p, rec, cb)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    _flush(p, cb, "preload")
    return n


@dataclass
class Paced:
    sent: int
    seconds: float
    behind_max_s: float  # how far the producer fell behind its schedule, at worst

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def paced(
    bootstrap: str,
    records: list[tuple[str, int, bytes | None, bytes | None]],
    rate: float,
    warm_topic: str,
) -> Paced:
    """Produce `records` at `rate` per second (small bursts every 2 ms), timestamps at produce().

    The producer is warmed up first (connection, metadata, idempotent producer id) with one
    record to `warm_topic`, a topic nobody measured reads: otherwise the first half second of
    records waits for that set-up and shows as latency that is neither the broker's nor the job's.
    """
    p = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    cb = Failures()
    p.produce(warm_topic, b"", b"atpflow-bench-warm-up", on_delivery=cb)
    _flush(p, cb, "warm-up")
    n = len(records)
    start = time.monotonic()
    sent = 0
    behind = 0.0
    while sent < n:
        now = time.monotonic()
        due = min(n, int((now - start) * rate) + 1)
        if due - sent > 1:
            behind = max(behind, (due - sent - 1) / rate)
        while sent < due:
            _produce(p, records[sent], cb)
            sent += 1
        p.poll(0)
        next_at = start + sent / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 0.002))
    seconds = time.monotonic() - start
    _flush(p, cb, "paced producer")
    return Paced(sent, seconds, behind)


@dataclass(slots=True)
class Msg:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    ts: int | None


def read_all(bootstrap: str, topics: list[str], timeout: float = 600.0) -> list[Msg]:
    """Every record of `topics` to the partition-EOF (not the high watermark: see ENGINE-NOTES)."""
    c = Consumer({"bootstrap.servers": bootstrap, **CONSUMER})
    try:
        md = c.list_topics(timeout=10)  # all topics: never ask Tansu about one by name
        tps = [
            TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md.topics[t].partitions
        ]
        c.assign(tps)
        pending = {(tp.topic, tp.partition) for tp in tps}
        out: list[Msg] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                msg = f"reading {topics}: no EOF on {sorted(pending)} within {timeout:.0f} s"
                raise TimeoutError(msg)
            for m in c.consume(10_000, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((m.topic(), m.partition()))
                        continue
                    raise KafkaException(err)
                kind, ts = m.timestamp()
                out.append(
                    Msg(
                        m.topic(),
                        m.partition(),
                        m.key(),
                        m.value(),
                        None if kind == TIMESTAMP_NOT_AVAILABLE else ts,
                    )
                )
        return out
    finally:
        c.close()


# -- correctness -----------------------------------------------------------------------------


@dataclass
class Expected:
    """What replay says: last quantity per (topic, key), dead letters, streams with a gap."""

    last: dict[tuple[str, str], int]
    letters: Counter[tuple[str, str, str, str]]  # (reason, topic, key, source_id)
    gap_streams: set[str]  # "<topic>|<key>" of every stream replay skipped a gap on
    gap_skus: set[str]
    records_out: dict[str, int]


def load_expected(out_dir: Path, config: Any, codes: dict[str, str]) -> Expected:
    """Replay's outputs, read back from its `<topic>.jsonl` files."""
    t = config.topics
    last: dict[tuple[str, str], tuple[int, int]] = {}
    records_out: dict[str, int] = {}
    for c in config.channels.channels:
        topic = t.availability(c.id)
        n = 0
        with open(out_dir / f"{topic}.jsonl", encoding="utf-8") as fh:
            for text in fh:
                o = json.loads(text)
                v = o["value"]
                k = (topic, o["key"])
                n += 1
                if k not in last or v["version"] > last[k][0]:
                    last[k] = (v["version"], v["available"])
        records_out[topic] = n
    letters: Counter[tuple[str, str, str, str]] = Counter()
    gap_streams: set[str] = set()
    gap_skus: set[str] = set()
    with open(out_dir / f"{t.dead_letter}.jsonl", encoding="utf-8") as fh:
        for text in fh:
            v = json.loads(text)["value"]
            letters[_letter(v)] += 1
            if v["reason"] == "SEQUENCE_GAP":
                gap_streams.add(f"{v['topic']}|{v['key'] or ''}")
                code = (v.get("gap") or {}).get("stream", "").rsplit("|", 1)[-1]
                if code in codes:
                    gap_skus.add(codes[code])
    records_out[t.dead_letter] = sum(letters.values())
    return Expected(
        {k: v for k, (_, v) in last.items()}, letters, gap_streams, gap_skus, records_out
    )


def _letter(v: dict[str, Any]) -> tuple[str, str, str, str]:
    return (v["reason"], v["topic"], v["key"] or "", v["source_id"] or "")


@dataclass
class Check:
    ok: bool
    keys: int
    mismatched: int
    missing: int
    extra: int
    #: differences on skus whose stream replay skipped a never-filled gap for: a live run that
    #: stops at the end of its input still waits for it (gap_timeout), replay settles it
    held_behind_gap: int
    letters_ok: bool
    letters_detail: str
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def short(self) -> str:
        if self.ok:
            extra = (
                f" ({self.held_behind_gap} keys held behind a gap)" if self.held_behind_gap else ""
            )
            return f"ok{extra}"
        return (
            f"WRONG: {self.mismatched} mismatched, {self.missing} missing, {self.extra} extra keys"
            f"{'' if self.letters_ok else '; dead letters: ' + self.letters_detail}"
        )


def sku_of(key: str) -> str:
    return key.split("|", 1)[0]


def check_outputs(outputs: list[Msg], expected: Expected, config: Any) -> Check:
    """The last record per key by version carries replay's quantity; dead letters match.

    Only `available` is compared: versions are a hybrid logical clock live and count from 1 in
    replay, and the working fields of the last record (basis, source_id, as_of) depend on the
    order in which a key's WMS and ERP streams interleave, which has no defined order
    (ENGINE-NOTES); the final quantity does not, the fold being order-free across streams.
    """
    from schemas import codec

    avail, dlc = codec("AvailabilityRecord"), codec("DeadLetter")
    t = config.topics
    best: dict[tuple[str, str], tuple[int, int]] = {}
    letters: Counter[tuple[str, str, str, str]] = Counter()
    for m in outputs:
        if m.topic == t.dead_letter:
            letters[_letter(dlc.decode(m.value))] += 1
            continue
        v = avail.decode(m.value)
        k = (m.topic, m.key.decode() if m.key else "")
        if k not in best or v["version"] > best[k][0]:
            best[k] = (v["version"], v["available"])
    got = {k: a for k, (_, a) in best.items()}
    bad, missing, extra, held, examples = 0, 0, 0, 0, []
    for k, want in expected.last.items():
        have = got.get(k)
        if have == want:
            continue
        if sku_of(k[1]) in expected.gap_skus:
            held += 1
            continue
        if have is None:
            missing += 1
        else:
            bad += 1
        if len(examples) < 5:
            examples.append(f"{k[0]} {k[1]}: live {have}, replay {want}")
    for k in got.keys() - expected.last.keys():
        extra += 1
        if len(examples) < 5:
            examples.append(f"{k[0]} {k[1]}: live {got[k]}, not in replay")
    # Dead letters: every live one is one replay wrote too. Outside the timer reasons and the
    # streams replay skipped a gap on (held live until gap_timeout), the two are equal.
    problems = []
    over = letters - expected.letters
    if over:
        problems.append(f"{sum(over.values())} not in replay, e.g. {next(iter(over))}")
    strict = Counter(
        {
            k: n
            for k, n in expected.letters.items()
            if k[0] not in TIMER_REASONS and f"{k[1]}|{k[2]}" not in expected.gap_streams
        }
    )
    under = strict - letters
    if under:
        problems.append(f"{sum(under.values())} missing, e.g. {next(iter(under))}")
    by_reason_live = Counter(k[0] for k in letters.elements())
    by_reason_replay = Counter(k[0] for k in expected.letters.elements())
    letters_ok = not problems
    return Check(
        ok=not (bad or missing or extra) and letters_ok,
        keys=len(expected.last),
        mismatched=bad,
        missing=missing,
        extra=extra,
        held_behind_gap=held,
        letters_ok=letters_ok,
        letters_detail="; ".join(problems)
        or f"live {dict(by_reason_live)} / replay {dict(by_reason_replay)}",
        examples=examples,
    )


# -- measurements ----------------------------------------------------------------------------


def run_replay(work: Path, fixture: Path, name: str) -> dict[str, Any]:
    out = work / name
    t0 = time.time()
    child = Child.start(
        [
            PY,
            "-m",
            "dataflows.cli",
            "replay",
            "--flow",
            FLOW,
            "--json",
            "--out",
            str(out),
            str(fixture),
        ],
        work / f"{name}.log",
        env=clean_env(),
        started=t0,
        stdout=subprocess.PIPE,
    )
    stdout = child.proc.stdout.read() if child.proc.stdout else b""
    child.wait(24 * 3600)
    if child.code != 0:
        msg = f"replay exited {child.code}: {child.tail()}"
        raise RuntimeError(msg)
    summary = json.loads(stdout)
    records = sum(summary["records_in"].values())
    wall = (child.ended or time.time()) - t0
    return {
        "records_in": records,
        "wall_s": round(wall, 3),
        "records_per_s": records / wall,
        "engine_s": summary["seconds"],
        "peak_rss_mib": (child.maxrss_kib or 0) / 1024,
        "accounted_ok": summary["accounted"] == records,
        "summary": summary,
        "out_dir": str(out),
    }


def run_role(args: list[str], log_path: Path, what: str) -> tuple[Child, dict[str, Any]]:
    """This script in `--role args[0]`, in its own process; its JSON line on stdout."""
    child = Child.start([PY, str(Path(__file__).resolve()), "--role", *args], log_path,
                        env=clean_env(), started=time.time(), stdout=subprocess.PIPE)
    stdout = child.proc.stdout.read() if child.proc.stdout else b""
    child.wait(3600)
    if child.code != 0:
        msg = f"{what} exited {child.code}: {child.tail()}"
        raise RuntimeError(msg)
    return child, json.loads(stdout)


def run_units(work: Path, wire: Wire, expected: Expected, name: str) -> dict[str, Any]:
    from dataflows.config import SAMPLE_CONFIG, load_config

    out = work / f"{name}.outputs"
    child, res = run_role(["units", "--wire", str(wire.path), "--config", str(SAMPLE_CONFIG),
                           "--out", str(out)], work / f"{name}.log", "units run")
    with open(out, "rb") as fh:
        written = pickle.load(fh)  # noqa: S301 - our own file
    out.unlink()
    check = check_outputs([Msg(topic, 0, key.encode() if key else None, value, None)
                           for topic, key, value in written], expected,
                          load_config(SAMPLE_CONFIG, environ={}))
    seconds = res["seconds"]
    return {
        "records_in": res["records"],
        "records_out": res["outputs"],
        "records_per_s": res["records"] / seconds,
        "engine_s": round(seconds, 3),
        "cpu_us_per_record": round(seconds / res["records"] * 1e6, 1),
        "stage_us_per_record": {k: round(v / res["records"] * 1e6, 2)
                                for k, v in res["stages"].items()},
        "peak_rss_mib": (child.maxrss_kib or 0) / 1024,
        "check": check.as_dict(),
        "ok": check.ok,
        "check_text": check.short(),
    }


def run_ceiling(work: Path, wire: Wire, name: str, decoder: str = "fastavro") -> dict[str, Any]:
    with Env(work, name) as env:
        preload(env.bootstrap, wire.records())
        child, res = run_role(["ceiling", "--bootstrap", env.bootstrap, "--topics",
                               ",".join(env.input_topics), "--decoder", decoder],
                              env.dir / "ceiling.log", "ceiling consumer")
    t0 = child.started
    if res["records"] != wire.total:
        msg = f"ceiling read {res['records']} records, {wire.total} were published"
        raise RuntimeError(msg)
    wall = res["last_ms"] / 1000 - t0
    return {
        "records_in": res["records"],
        "undecodable": res["undecodable"],
        "wall_s": round(wall, 3),
        "records_per_s": res["records"] / wall,
        "peak_rss_mib": (child.maxrss_kib or 0) / 1024,
        "first_output_s": res["first_ms"] / 1000 - t0,
    }


def start_job(
    env: Env, processes: int, *, stop_at_eof: bool, tag: str
) -> tuple[list[Child], list[int]]:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    metrics_ports = [free_port() for _ in range(processes)]
    t0 = time.time()
    children = []
    for i in range(processes):
        cmd = [PY, "-m", "dataflows.cli", "run", "--config", str(env.config_path), "--flow", FLOW]
        if stop_at_eof:
            cmd.append("--stop-at-eof")
        if processes > 1:
            cmd += ["-i", str(i), "-a", addresses]
        run_env = clean_env(
            ATPFLOW__METRICS_PORT=str(metrics_ports[i]), BYTEWAX_DATAFLOW_API_ENABLED="true"
        )
        children.append(Child.start(cmd, env.dir / f"{tag}-{i}.log", env=run_env, started=t0))
    return children, metrics_ports


def wait_all(children: list[Child], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.poll() for c in children):
        if time.monotonic() > deadline or any(c.code not in (None, 0) for c in children):
            for c in children:
                c.stop()
            detail = "\n".join(
                f"--- process {i} (exit {c.code}):\n{c.tail()}" for i, c in enumerate(children)
            )
            msg = f"{what} did not finish cleanly within {timeout:.0f} s:\n{detail}"
            raise RuntimeError(msg)
        time.sleep(0.1)
    bad = [c for c in children if c.code != 0]
    if bad:
        msg = f"{what}: exit codes {[c.code for c in children]}:\n{bad[0].tail()}"
        raise RuntimeError(msg)


def run_live(
    work: Path,
    wire: Wire,
    expected: Expected,
    name: str,
    *,
    processes: int,
    recovery: bool,
    timeout: float,
) -> dict[str, Any]:
    with Env(work, name, recovery=recovery) as env:
        tp = time.monotonic()
        preload(env.bootstrap, wire.records())
        preload_s = time.monotonic() - tp
        children, _ = start_job(env, processes, stop_at_eof=True, tag="run")
        t0 = children[0].started
        wait_all(children, timeout, f"{name} (atpflow run)")
        tr = time.monotonic()
        outputs = read_all(env.bootstrap, env.output_topics)
        read_s = time.monotonic() - tr
        check = check_outputs(outputs, expected, env.config)
    stamps = [m.ts for m in outputs if m.ts is not None]
    first, last = min(stamps) / 1000, max(stamps) / 1000
    exit_at = max(c.ended or 0 for c in children)
    counts = Counter(m.topic for m in outputs)
    return {
        "processes": processes,
        "recovery": recovery,
        "records_in": wire.total,
        "records_out": dict(counts),
        "wall_s": round(last - t0, 3),
        "exit_s": round(exit_at - t0, 3),
        "records_per_s": wire.total / (last - t0),
        "first_output_s": round(first - t0, 3),
        "peak_rss_mib": sum((c.maxrss_kib or 0) for c in children) / 1024,
        "peak_rss_mib_per_process": [(c.maxrss_kib or 0) / 1024 for c in children],
        # CPU time is steadier than wall time on a shared machine: us of CPU per input record
        # (start-up and the drain included), and the share of one core the job kept busy.
        "cpu_us_per_record": round(sum(c.cpu_s or 0 for c in children) / wire.total * 1e6, 1),
        "cpu_busy": round(sum(c.cpu_s or 0 for c in children) / max(exit_at - t0, 1e-9), 2),
        "preload_s": round(preload_s, 1),
        "read_outputs_s": round(read_s, 1),
        "check": check.as_dict(),
        "ok": check.ok,
        "check_text": check.short(),
    }


_METRIC = re.compile(r'^atpflow_records_in_total\{topic="([^"]+)"\}\s+([0-9.e+]+)$', re.M)


def records_in(port: int) -> Counter[str]:
    """atpflow_records_in_total by topic, from the job's metrics endpoint (empty if not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:  # noqa: S310
            text = r.read().decode()
    except OSError:
        return Counter()
    return Counter({t: int(float(v)) for t, v in _METRIC.findall(text)})


def latencies_of(
    outputs: list[Msg], inputs: list[Msg], config: Any
) -> tuple[list[tuple[int, int]], int]:
    """Output timestamp minus the causing input's timestamp (ms), per availability record."""
    from schemas import DecodeError, codec

    t = config.topics
    id_field = {
        t.wms_transactions: ("WmsInventoryTransaction", "txn_id"),
        t.erp_documents: ("ErpInventoryDocument", "doc_id"),
    }
    produced: dict[str, int] = {}
    for m in inputs:
        if m.topic not in id_field or m.value is None or m.ts is None:
            continue
        schema, f = id_field[m.topic]
        try:
            rid = codec(schema).decode(m.value)[f]
        except DecodeError:
            continue
        # A redelivery carries the same id: the first delivery is the one that applies.
        if rid not in produced or m.ts < produced[rid]:
            produced[rid] = m.ts
    avail = codec("AvailabilityRecord")
    out, unmatched = [], 0
    for m in outputs:
        if m.topic == t.dead_letter or m.ts is None:
            continue
        sid = avail.decode(m.value)["source_id"]
        ts = produced.get(sid)
        if ts is None:
            unmatched += 1
            continue
        out.append((ts, m.ts - ts))
    return out, unmatched


def lat_summary(samples: list[tuple[int, int]], warm_up_s: float) -> dict[str, Any]:
    """(input ms, latency ms) samples -> p50/p99/max after the warm-up, and over the whole run.

    The warm-up (the first `warm_up_s` seconds of input) is left out of the headline figures:
    it holds the one-off start-up costs (see docs/BENCHMARKS.md), reported apart as `all_*`.
    `p50_max_by_tenth` shows the run's shape: a job that cannot keep up grows tenth by tenth.
    """
    if not samples:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)
    start = ordered[0][0]
    steady = [v for ts, v in ordered if ts >= start + warm_up_s * 1000] or [v for _, v in ordered]
    values = [v for _, v in ordered]
    tenth = max(1, len(values) // 10)
    deciles = [
        [pct(values[i : i + tenth], 50), max(values[i : i + tenth])]
        for i in range(0, len(values) - tenth + 1, tenth)
    ][:10]
    return {
        "samples": len(steady),
        "warm_up_s": warm_up_s,
        "p50_ms": pct(steady, 50),
        "p99_ms": pct(steady, 99),
        "max_ms": max(steady),
        "all_samples": len(values),
        "all_p50_ms": pct(values, 50),
        "all_p99_ms": pct(values, 99),
        "all_max_ms": max(values),
        "p50_max_by_tenth": deciles,
    }


def run_latency_job(
    work: Path,
    wire: Wire,
    expected: Expected,
    name: str,
    rate: float,
    timeout: float,
    warm_up_s: float,
) -> dict[str, Any]:
    with Env(work, name) as env:
        items_topic = env.config.topics.items
        preload(env.bootstrap, wire.records({items_topic}))
        children, ports = start_job(env, 1, stop_at_eof=False, tag="run")
        job = children[0]
        try:
            deadline = time.monotonic() + 120
            while records_in(ports[0])[items_topic] < wire.items:
                if job.poll() or time.monotonic() > deadline:
                    msg = f"{name}: the job did not read the item master: {job.tail()}"
                    raise RuntimeError(msg)
                time.sleep(0.2)
            movements = [r for r in wire.records() if r[0] != items_topic]
            ready_s = time.time() - job.started
            pace = paced(env.bootstrap, movements, rate, env.config.topics.carrier_events)
            deadline = time.monotonic() + timeout
            while True:
                seen = records_in(ports[0])
                if sum(n for tp, n in seen.items() if tp != items_topic) >= len(movements):
                    break
                if job.poll() or time.monotonic() > deadline:
                    msg = (
                        f"{name}: the job read {dict(seen)} of {len(movements)} movements: "
                        f"{job.tail()}"
                    )
                    raise RuntimeError(msg)
                time.sleep(0.1)
        finally:
            job.stop()  # SIGTERM: the source ends, the dataflow drains and exits 0
        if job.code != 0:
            msg = f"{name}: the job exited {job.code}: {job.tail()}"
            raise RuntimeError(msg)
        outputs = read_all(env.bootstrap, env.output_topics)
        inputs = read_all(
            env.bootstrap, [env.config.topics.wms_transactions, env.config.topics.erp_documents]
        )
        check = check_outputs(outputs, expected, env.config)
        lat, unmatched = latencies_of(outputs, inputs, env.config)
    in_ts = [m.ts for m in inputs if m.ts is not None]
    out_ts = [m.ts for m in outputs if m.ts is not None]
    # How far behind the job was when the producer stopped: ~0 if it kept up with the rate.
    behind = (max(out_ts) - max(in_ts)) / 1000 if in_ts and out_ts else None
    return {
        "rate": rate,
        "offered": pace.sent,
        "achieved_rate": round(pace.achieved_rate, 1),
        "producer_behind_max_ms": round(pace.behind_max_s * 1000, 1),
        "ready_s": round(ready_s, 2),
        "behind_at_end_s": behind,
        **lat_summary(lat, warm_up_s),
        "unmatched": unmatched,
        "peak_rss_mib": (job.maxrss_kib or 0) / 1024,
        "check": check.as_dict(),
        "ok": check.ok,
        "check_text": check.short(),
    }


def run_latency_broker(
    work: Path, wire: Wire, name: str, rate: float, timeout: float, warm_up_s: float
) -> dict[str, Any]:
    with Env(work, name) as env:
        items_topic = env.config.topics.items
        movements = [r for r in wire.records() if r[0] != items_topic]
        topics = [env.config.topics.wms_transactions, env.config.topics.erp_documents]
        result = env.dir / "latencies.json"
        child = Child.start(
            [
                PY,
                str(Path(__file__).resolve()),
                "--role",
                "tail",
                "--bootstrap",
                env.bootstrap,
                "--topics",
                ",".join(topics),
                "--count",
                str(len(movements)),
                "--out",
                str(result),
                "--timeout",
                str(timeout),
            ],
            env.dir / "tail.log",
            env=clean_env(),
            stdout=subprocess.PIPE,
        )
        assert child.proc.stdout is not None
        line = child.proc.stdout.readline()  # "ready" once every partition reported its end
        if line.strip() != b"ready":
            child.stop()
            msg = f"{name}: the consumer did not start: {child.tail()}"
            raise RuntimeError(msg)
        pace = paced(env.bootstrap, movements, rate, env.config.topics.carrier_events)
        if not child.wait(timeout) or child.code != 0:
            child.stop()
            msg = f"{name}: the consumer did not finish: {child.tail()}"
            raise RuntimeError(msg)
        lat = [tuple(x) for x in json.loads(result.read_text())]
    return {
        "rate": rate,
        "offered": pace.sent,
        "achieved_rate": round(pace.achieved_rate, 1),
        "producer_behind_max_ms": round(pace.behind_max_s * 1000, 1),
        **lat_summary(lat, warm_up_s),
    }


# -- internal roles (plain consumers in their own process) -----------------------------------


def role_ceiling(args: argparse.Namespace) -> int:
    from dataflows.config import Topics
    from schemas import DecodeError, codec

    schemas = Topics().input_schemas
    topics = args.topics.split(",")
    codecs = {t: codec(schemas[t]) for t in topics}
    # The reference decodes with fastavro; `--decoder compiled` measures the same
    # consumer with the compiled reader the job itself uses.
    decoders = {t: c.decode if args.decoder == "compiled" else c.decode_generic
                for t, c in codecs.items()}
    c = Consumer({"bootstrap.servers": args.bootstrap, **CONSUMER})
    md = c.list_topics(timeout=10)
    tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md.topics[t].partitions]
    c.assign(tps)
    pending = {(tp.topic, tp.partition) for tp in tps}
    n = bad = 0
    first = last = 0
    while pending:
        for m in c.consume(1000, 0.1):  # the batch size KafkaRawSource uses
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((m.topic(), m.partition()))
                    continue
                raise KafkaException(err)
            try:
                decoders[m.topic()](m.value())
            except DecodeError:
                bad += 1
            n += 1
            if n == 1:
                first = now_ms()
        last = now_ms() if n else last
    c.close()
    print(json.dumps({"records": n, "undecodable": bad, "first_ms": first, "last_ms": last}))
    return 0


def role_units(args: argparse.Namespace) -> int:
    """The job's own per-record work with no engine and no Kafka: the availability steps'
    logic called directly on the wire records (in memory before the clock starts), outputs
    Avro-encoded but not produced. Whatever Bytewax and the Kafka client cost comes on top."""
    from dataflows.config import load_config
    from dataflows.gc_tuning import tune_gc
    from operators.decode import Decoded
    from operators.normalise import ItemRouter
    from operators.records import Output, RawRecord, Reason, dead_letter
    from operators.steps import Letters, ProjectShard, order_logic, shard_of, sort_batch
    from schemas import codec

    config = load_config(args.config, environ={})
    t = config.topics
    schemas = {topic: t.input_schemas[topic] for topic in (t.wms_transactions, t.erp_documents, t.items)}
    # Batches as the live source makes them: up to 1,000 records of one partition, the
    # partitions taken in turn.
    parts: dict[tuple[str, int], list[RawRecord]] = {}
    for topic, part, key, value in Wire(Path(args.wire), Counter(), 0).records():
        rows = parts.setdefault((topic, part), [])
        rows.append(RawRecord(topic, part, len(rows), key.decode() if key else None, value,
                              now_ms()))
    batches = []
    for start in range(0, max(len(r) for r in parts.values()), 1000):
        batches += [rows[start:start + 1000] for rows in parts.values() if start < len(rows)]
    records = sum(len(b) for b in batches)
    tune_gc()
    clock = time.time
    orders: dict[str, Any] = {}
    projects: dict[str, Any] = {}
    routers: dict[str, ItemRouter] = {}
    encoders: dict[str, Any] = {}
    stages = dict.fromkeys(("decode + sort", "sequence + normalise", "ATP + channel records",
                            "Avro encode"), 0.0)
    # What the check needs, without holding every output (which a sink does not either): the
    # last record per availability key (versions increase per key, so the last is the newest)
    # and every dead letter.
    last: dict[tuple[str, str | None], bytes] = {}
    letters_out: list[tuple[str, str | None, bytes]] = []
    outputs = 0
    perf = time.perf_counter
    t0 = perf()
    for raws in batches:
        ta = perf()
        chunks: dict[str, list[Any]] = {}
        letters = Letters()
        for x in sort_batch(raws, schemas, t.items):
            if x.__class__ is tuple:
                chunks.setdefault(x[0], []).append(x[1])
            elif x.__class__ is Decoded:
                if x.invalid:  # as the flow's `validate_items` step does
                    letters.append(dead_letter(x.raw, Reason.INVALID_RECORD, x.invalid,
                                               x.rec.sku or None))
                    continue
                router = routers.setdefault(x.rec.sku, ItemRouter(None))
                for code, update in router.on_item(x.rec):
                    chunks.setdefault(shard_of(code), []).append([(code, update)])
            else:
                letters += x
        tb = perf()
        movements: dict[str, list[Any]] = {}
        for shard, values in chunks.items():
            logic = orders.get(shard)
            if logic is None:
                logic = orders[shard] = order_logic(
                    None, gap_timeout=config.gap_timeout, max_buffered=config.max_buffered,
                    max_clock_skew=config.max_clock_skew, locations=config.locations,
                    unknown_item_timeout=config.unknown_item_timeout, mode="live", clock=clock)
            for x in logic.on_batch(values)[0]:
                if x.__class__ is tuple:
                    movements.setdefault(x[0], []).append(x[1])
                else:
                    letters += x
        tc = perf()
        outs: list[Any] = []
        for shard, values in movements.items():
            logic = projects.get(shard)
            if logic is None:
                logic = projects[shard] = ProjectShard(
                    None, config.channels, t.availability, lambda: int(clock() * 1000),
                    encoded=True)  # as the live job without side sinks
            for x in logic.on_batch(values)[0]:
                if x.__class__ is Letters:
                    letters += x
                else:
                    outs += x
        outs += [Output(t.dead_letter, dl.key, "DeadLetter", dl.as_avro()) for dl in letters]
        td = perf()
        for o in outs:
            encode = encoders.get(o.schema)
            if encode is None:
                encode = encoders[o.schema] = codec(o.schema).encode
            value = o.value if o.value.__class__ is bytes else encode(o.value)
            if o.topic == t.dead_letter:
                letters_out.append((o.topic, o.key, value))
            else:
                last[o.topic, o.key] = value
        outputs += len(outs)
        te = perf()
        for name, dt in zip(stages, (tb - ta, tc - tb, td - tc, te - td), strict=True):
            stages[name] += dt
    total = perf() - t0
    with open(args.out, "wb") as fh:
        pickle.dump([(topic, key, value) for (topic, key), value in last.items()] + letters_out, fh,
                    protocol=pickle.HIGHEST_PROTOCOL)
    print(json.dumps({"records": records, "outputs": outputs, "seconds": total,
                      "stages": stages}))
    return 0


def role_tail(args: argparse.Namespace) -> int:
    topics = args.topics.split(",")
    c = Consumer({"bootstrap.servers": args.bootstrap, **CONSUMER})
    md = c.list_topics(timeout=10)
    tps = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md.topics[t].partitions]
    c.assign(tps)
    waiting = {(tp.topic, tp.partition) for tp in tps}
    deadline = time.monotonic() + args.timeout
    lat: list[tuple[int, int]] = []
    ready = False
    while len(lat) < args.count and time.monotonic() < deadline:
        m = c.poll(0.1)  # returns as soon as a record is there: no batching delay
        if m is None:
            continue
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                waiting.discard((m.topic(), m.partition()))
                if not waiting and not ready:
                    ready = True
                    print("ready", flush=True)
                continue
            raise KafkaException(err)
        ts = m.timestamp()[1]
        lat.append((ts, now_ms() - ts))
    c.close()
    Path(args.out).write_text(json.dumps(lat))
    return 0 if len(lat) >= args.count else 1


# -- memory per stream -----------------------------------------------------------------------


def count_streams(fixture: Path, topics: set[str]) -> int:
    """Distinct (topic, key) among the movement lines: the sequencing streams."""
    seen: set[tuple[str, str]] = set()
    with open(fixture, encoding="utf-8") as fh:
        for text in fh:
            line = json.loads(text)
            if line["topic"] in topics:
                seen.add((line["topic"], line.get("key") or ""))
    return len(seen)


def run_memory(work: Path, streams: int, seed: int, config: Any) -> dict[str, Any]:
    """Replay-mode RSS with ~`streams` live streams, minus the same item master with none.

    `atpflow generate` picks a random sku x warehouse x source per movement: with skus =
    streams / 5 and 2 movements per stream wanted, about 96 % of the 6 x skus possible streams
    get at least one movement (1 - e^-2 of the WMS ones, 1 - e^-4/3 of the ERP ones).
    """
    skus = max(1, streams // 5)
    movements = streams * 2
    base_fx, full_fx = work / "mem-base.jsonl", work / "mem-full.jsonl"
    log(f"memory: generating {movements:,} movements over {skus:,} skus")
    generate(base_fx, 0, skus, seed, 0.0)
    generate(full_fx, movements, skus, seed, 0.0)
    t = config.topics
    n_streams = count_streams(full_fx, {t.wms_transactions, t.erp_documents})
    log(f"memory: {n_streams:,} streams; replaying the baseline (item master only), twice")
    # Twice, keeping the lower: a one-off allocator peak in a baseline run was seen to add
    # ~50 MiB, which would hide the streams of a small run entirely.
    bases = [run_replay(work, base_fx, f"mem-base-out-{i}") for i in range(2)]
    base = min(bases, key=lambda b: b["peak_rss_mib"])
    log("memory: replaying with every stream live")
    full = run_replay(work, full_fx, "mem-full-out")
    for fx in (base_fx, full_fx):
        fx.unlink(missing_ok=True)
    delta = full["peak_rss_mib"] - base["peak_rss_mib"]
    return {
        "streams": n_streams,
        "skus": skus,
        "movements": movements,
        "baseline_rss_mib": round(base["peak_rss_mib"], 1),
        "baseline_runs_mib": [round(b["peak_rss_mib"], 1) for b in bases],
        "rss_mib": round(full["peak_rss_mib"], 1),
        "bytes_per_stream": round(delta * 1024 * 1024 / n_streams) if n_streams else None,
        "replay_records_per_s": round(full["records_per_s"]),
    }


# -- the suite -------------------------------------------------------------------------------

LIVE = {
    "live-1p": (1, False),
    "live-2p": (2, False),
    "live-1p-recovery": (1, True),
    "live-2p-recovery": (2, True),
}
LABELS = {
    "ceiling": "ceiling: plain consumer, Avro decode (fastavro)",
    "ceiling-compiled": "plain consumer, atpflow's compiled Avro decoder",
    "live-1p": "live, 1 process",
    "live-2p": "live, 2 processes",
    "live-1p-recovery": "live, 1 process, recovery (10 s snapshots)",
    "live-2p-recovery": "live, 2 processes, recovery (10 s snapshots)",
    "replay": "replay (atpflow replay)",
    "units": "the job's step logic alone: no engine, no Kafka (outputs encoded, not sent)",
}
ALL = [*LABELS, "latency", "memory"]


@dataclass
class Dataset:
    fixture: Path
    wire: Wire
    expected: Expected
    replay: dict[str, Any]


def prepare(
    work: Path, config: Any, name: str, movements: int, skus: int, seed: int, gaps: float
) -> Dataset:
    fixture = work / f"{name}.jsonl"
    log(f"{name}: generating {movements:,} movements over {skus:,} skus (seed {seed}, gaps {gaps})")
    generate(fixture, movements, skus, seed, gaps)
    wire = encode_fixture(config, fixture, work / f"{name}.wire")
    by_topic = ", ".join(f"{t}: {n:,}" for t, n in sorted(wire.counts.items()))
    log(f"{name}: {wire.total:,} records ({by_topic}); replaying for the expected outputs")
    rep = run_replay(work, fixture, f"{name}-replay")
    expected = load_expected(Path(rep["out_dir"]), config, item_skus(fixture, config.topics.items))
    return Dataset(fixture, wire, expected, rep)


def _safe(
    results: dict[str, list[dict[str, Any]]],
    errors: list[str],
    name: str,
    fn: Any,
    *a: Any,
    **kw: Any,
) -> dict[str, Any] | None:
    probe = host_probe_ms()
    log(f"{name}: running (host probe {probe} ms)")
    try:
        res = fn(*a, **kw)
        res["host_probe_ms"] = probe
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
        log(f"{name}: FAILED: {exc}")
        results.setdefault(name, []).append({"error": f"{type(exc).__name__}: {exc}"})
        return None
    results.setdefault(name, []).append(res)
    brief = {
        k: res[k]
        for k in (
            "wall_s",
            "records_per_s",
            "first_output_s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "peak_rss_mib",
            "check_text",
        )
        if k in res
    }
    log(f"{name}: {json.dumps(brief, default=lambda x: round(x, 1))}")
    return res


def round_ratios(runs: list[dict[str, Any]], ceilings: list[dict[str, Any]]) -> list[float]:
    """Each round's throughput over the same round's ceiling (a round runs each measurement
    once, in order, so the i-th run of each belongs to round i)."""
    return [r["records_per_s"] / c["records_per_s"] for r, c in zip(runs, ceilings, strict=False)
            if r.get("records_per_s") and c.get("records_per_s")]


def host_probe_ms() -> float:
    """How fast this host runs plain Python right now: the best of 3 runs of a fixed
    interpreter-bound loop, in ms (lower is faster). The job is bound by one Python thread
    while the ceiling is mostly C and broker time, so a slower host lowers the job's ratio to
    the ceiling: a probe next to every measurement shows when that happened."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        d: dict[int, int] = {}
        for i in range(200_000):
            d[i & 1023] = d.get(i & 1023, 0) + i
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    keys = (
        "wall_s",
        "records_per_s",
        "first_output_s",
        "peak_rss_mib",
        "exit_s",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "all_p50_ms",
        "all_p99_ms",
        "all_max_ms",
        "behind_at_end_s",
        "achieved_rate",
        "engine_s",
        "cpu_us_per_record",
        "cpu_busy",
    )
    out: dict[str, Any] = {"runs": len(runs), "ok_runs": len(good)}
    for k in keys:
        vals = [r[k] for r in good if r.get(k) is not None]
        if vals:
            out[k] = median(vals)
    stages = [r["stage_us_per_record"] for r in good if "stage_us_per_record" in r]
    if stages:
        out["stage_us_per_record"] = {k: median(s[k] for s in stages) for k in stages[0]}
    if any("ok" in r for r in runs):
        out["correct"] = all(r.get("ok") for r in runs)
        out["check_text"] = "; ".join(
            sorted({r.get("check_text", r.get("error", "?")) for r in runs})
        )
    return out


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"atpflow benchmark, {report['started']}: {report['args']['movements']:,} movements over "
        f"{report['args']['skus']:,} skus ({report['data']['records_in']:,} input records), "
        f"median of {report['args']['repeat']} run(s)",
        f"machine: {report['machine']['cores']} cores, {report['machine']['cpu_model']}, "
        f"{report['machine']['python']}, bytewax {report['machine']['bytewax']}; load avg "
        f"{report['machine']['load_avg'][0]:.2f} before, {report['load_avg_after'][0]:.2f} after",
        "",
        "| measurement | records/s | vs ceiling | wall s | first output s | peak RSS MiB "
        "| CPU us/record (busy) | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, label in LABELS.items():
        if name not in s:
            continue
        r = s[name]
        rate = r.get("records_per_s")
        ratio = f"{r['vs_ceiling']:.2f}" if r.get("vs_ceiling") else "-"
        reference = name in ("ceiling", "ceiling-compiled", "replay")
        check = r.get("check_text", "n/a (the reference)" if reference else "-")
        if r["ok_runs"] < r["runs"]:
            check = f"{r['runs'] - r['ok_runs']} run(s) failed; " + check
        cpu = r.get("cpu_us_per_record")
        busy = r.get("cpu_busy")
        cpu_text = f"{cpu:,.1f}" + (f" ({busy:.2f})" if busy else "") if cpu else "-"
        lines.append(
            f"| {label} | {fmt(rate)} | {ratio} | {fmt(r.get('wall_s'), 1)} | "
            f"{fmt(r.get('first_output_s'), 2)} | {fmt(r.get('peak_rss_mib'))} | {cpu_text} | {check} |"
        )
    lines += ["", "vs ceiling: the median of each round's ratio to the same round's ceiling"]
    probe = report.get("host_probe_ms")
    if probe:
        lines[-1] += (f"; host probe (a fixed pure-Python loop before each measurement, lower is "
                      f"faster): {probe['min']:.0f} to {probe['max']:.0f} ms, median "
                      f"{probe['median']:.0f}")
    stages = (s.get("units") or {}).get("stage_us_per_record")
    if stages:
        lines += ["", "step logic alone, us per input record: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())]
    lat = report.get("latency") or {}
    if lat:
        lines += [
            "",
            "| offered rate (records/s) | achieved (job / broker) | job p50 / p99 / max ms "
            "| broker p50 / p99 / max ms | job max incl. start-up ms | job behind at end s "
            "| job peak RSS MiB | check |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for rate, both in lat.items():
            j, b = both.get("job") or {}, both.get("broker") or {}
            jt = " / ".join(fmt(j.get(k)) for k in ("p50_ms", "p99_ms", "max_ms"))
            bt = " / ".join(fmt(b.get(k)) for k in ("p50_ms", "p99_ms", "max_ms"))
            check = j.get("check_text", "-")
            if j.get("ok_runs", 0) < j.get("runs", 0):
                check = f"{j['runs'] - j['ok_runs']} run(s) failed; " + check
            lines.append(
                f"| {fmt(int(float(rate)))} | {fmt(j.get('achieved_rate'))} / "
                f"{fmt(b.get('achieved_rate'))} | {jt} | {bt} | {fmt(j.get('all_max_ms'))} | "
                f"{fmt(j.get('behind_at_end_s'), 2)} | {fmt(j.get('peak_rss_mib'))} | {check} |"
            )
    mem = report.get("memory")
    if mem and "error" not in mem:
        lines += [
            "",
            "| live streams | skus | baseline RSS MiB | RSS MiB | bytes per stream |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {fmt(mem['streams'])} | {fmt(mem['skus'])} | {fmt(mem['baseline_rss_mib'], 1)} | "
            f"{fmt(mem['rss_mib'], 1)} | {fmt(mem['bytes_per_stream'])} |",
        ]
    elif mem:
        lines += ["", f"memory per stream: FAILED: {mem['error']}"]
    if report["errors"]:
        lines += ["", "errors:"] + [f"- {e.splitlines()[0]}" for e in report["errors"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--movements", type=int, default=1_000_000, help="movements in the seeded data")
    p.add_argument("--skus", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--gaps",
        type=float,
        default=0.0,
        help="share of lost records (default 0: see docs/BENCHMARKS.md, 'Correctness')",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (medians are shown)")
    p.add_argument("--rates", default="2000,10000", help="offered rates for the latency runs")
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="length of each paced run (capped at --movements records)",
    )
    p.add_argument(
        "--latency-warm-up",
        type=float,
        default=5.0,
        help="seconds at the start of each paced run left out of the latency figures "
        "(at most a quarter of the run)",
    )
    p.add_argument(
        "--streams", type=int, default=1_000_000, help="live streams for bytes per stream"
    )
    p.add_argument(
        "--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}"
    )
    p.add_argument("--json", default="bench-results.json", help="where to write the results")
    p.add_argument(
        "--workdir", help="keep fixtures, logs and replay outputs here (default: a temp dir)"
    )
    p.add_argument("--role", choices=["ceiling", "tail", "units"], help=argparse.SUPPRESS)
    p.add_argument("--wire", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    p.add_argument("--topics", help=argparse.SUPPRESS)
    p.add_argument("--decoder", choices=["fastavro", "compiled"], default="fastavro",
                   help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=600, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "ceiling":
        return role_ceiling(args)
    if args.role == "tail":
        return role_tail(args)
    if args.role == "units":
        return role_units(args)
    # SIGTERM unwinds like Ctrl-C, so the `with` blocks stop the broker and the job by pid.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ALL]
    if unknown:
        raise SystemExit(f"--only: unknown measurement(s) {unknown}; choose from {ALL}")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    from dataflows.config import load_config

    config = load_config(environ={})
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = machine()
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="atpflow-bench-")
        work = Path(tmp.name)
    log(f"working in {work}")
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []
    latency: dict[str, dict[str, list[dict[str, Any]]]] = {}
    memory: dict[str, Any] | None = None
    try:
        main_data = prepare(work, config, "data", args.movements, args.skus, args.seed, args.gaps)
        total = main_data.wire.total
        timeout = max(600.0, total / 200)
        lat_data: dict[float, Dataset] = {}
        if "latency" in only:
            for rate in rates:
                n = min(args.movements, int(rate * args.latency_seconds))
                lat_data[rate] = prepare(
                    work, config, f"latency-{int(rate)}", n, args.skus, args.seed, args.gaps
                )
        # Repeats outermost: a burst of load from elsewhere spreads over measurements, not one.
        for r in range(args.repeat):
            log(f"=== round {r + 1} of {args.repeat}")
            if "ceiling" in only:
                _safe(results, errors, "ceiling", run_ceiling, work, main_data.wire, f"ceiling-{r}")
            if "ceiling-compiled" in only:
                _safe(results, errors, "ceiling-compiled", run_ceiling, work, main_data.wire,
                      f"ceiling-compiled-{r}", "compiled")
            for name, (procs, rec) in LIVE.items():
                if name in only:
                    _safe(
                        results,
                        errors,
                        name,
                        run_live,
                        work,
                        main_data.wire,
                        main_data.expected,
                        f"{name}-{r}",
                        processes=procs,
                        recovery=rec,
                        timeout=timeout,
                    )
            if "units" in only:
                _safe(results, errors, "units", run_units, work, main_data.wire,
                      main_data.expected, f"units-{r}")
            if "replay" in only:
                if r == 0:
                    results.setdefault("replay", []).append(main_data.replay)
                else:
                    _safe(
                        results,
                        errors,
                        "replay",
                        run_replay,
                        work,
                        main_data.fixture,
                        f"replay-{r}",
                    )
            for rate, data in lat_data.items():
                slot = latency.setdefault(str(rate), {"job": [], "broker": []})
                lt = max(300.0, data.wire.total / rate * 3 + 120)
                warm = min(args.latency_warm_up, data.wire.total / rate / 4)
                res = _safe(
                    results,
                    errors,
                    f"latency-job-{int(rate)}",
                    run_latency_job,
                    work,
                    data.wire,
                    data.expected,
                    f"latency-job-{int(rate)}-{r}",
                    rate,
                    lt,
                    warm,
                )
                slot["job"].append(res or results[f"latency-job-{int(rate)}"][-1])
                res = _safe(
                    results,
                    errors,
                    f"latency-broker-{int(rate)}",
                    run_latency_broker,
                    work,
                    data.wire,
                    f"latency-broker-{int(rate)}-{r}",
                    rate,
                    lt,
                    warm,
                )
                slot["broker"].append(res or results[f"latency-broker-{int(rate)}"][-1])
        if "memory" in only:
            try:
                memory = run_memory(work, args.streams, args.seed, config)
                log(f"memory: {memory}")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"memory: {type(exc).__name__}: {exc}")
                memory = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for child in _CHILDREN:
            child.stop()
        report: dict[str, Any] = {
            "started": started,
            "finished": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": info,
            "load_avg_after": list(os.getloadavg()),
            "args": {
                k: v
                for k, v in vars(args).items()
                if k not in ("role", "bootstrap", "topics", "count", "out", "timeout", "wire", "config")
            },
        }
        report["data"] = (
            {
                "records_in": main_data.wire.total,
                "by_topic": dict(main_data.wire.counts),
                "replay_summary": main_data.replay["summary"],
                "expected_keys": len(main_data.expected.last),
            }
            if "main_data" in locals()
            else {"records_in": 0}
        )
        report["summary"] = {
            n: summarise(runs) for n, runs in results.items() if not n.startswith("latency-")
        }
        for name, s in report["summary"].items():
            ratios = round_ratios(results.get(name, []), results.get("ceiling", []))
            if ratios:
                s["vs_ceiling_by_round"] = ratios
                s["vs_ceiling"] = median(ratios)
        probes = [r["host_probe_ms"] for runs in results.values() for r in runs
                  if "host_probe_ms" in r]
        if probes:
            report["host_probe_ms"] = {"min": min(probes), "median": median(probes),
                                       "max": max(probes)}
        report["latency"] = {
            rate: {"job": summarise(v["job"]), "broker": summarise(v["broker"])}
            for rate, v in latency.items()
        }
        report["memory"] = memory
        report["runs"] = results
        report["errors"] = errors
        wrong = [n for n, s in report["summary"].items() if s.get("correct") is False]
        wrong += [
            f"latency-job-{r}"
            for r, v in report["latency"].items()
            if v["job"].get("correct") is False
        ]
        report["all_correct"] = not wrong
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        if report["data"]["records_in"]:
            print(table(report))
        print(f"\nresults: {Path(args.json).resolve()}")
        if tmp is not None:
            tmp.cleanup()
    return 1 if errors or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
