"""`atpflow demo`: the whole product in under a minute, with nothing but the install.

Starts a local Kafka-compatible broker (Tansu, memory storage, a free port),
creates the topics, starts the real dataflows with `atpflow run`, publishes a
bundled scenario in bursts (duplicates, late records, lost records, poison),
and shows channel availability changing live, then a dead-letter summary.
Everything it started is stopped by process id, also on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from dataflows.broker import LocalBroker
from dataflows.config import ROOT, SAMPLE_CONFIG, Config, load_config
from schemas import codec

__all__ = ["run_demo"]

SCENARIO_DIR = ROOT / "config" / "demo"
#: Short timeouts so that gaps and unknown items settle while you watch.
DEMO_TIMEOUTS = {"gap_timeout": "5s", "unknown_item_timeout": "5s", "unknown_tracking_timeout": "8s"}
#: Stop once nothing new arrived for this long after the last burst.
QUIET_SECONDS = 6.0
MAX_SECONDS = 55.0


@dataclass
class _View:
    """What the screen shows, filled by the consumer thread."""

    latest: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    changed_at: dict[tuple[str, str], float] = field(default_factory=dict)
    dead: Counter[str] = field(default_factory=Counter)
    dead_recent: list[str] = field(default_factory=list)
    milestones: list[str] = field(default_factory=list)
    records_out: int = 0
    last_output: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _write_config(tmp: Path, bootstrap: str) -> Path:
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text(encoding="utf-8"))
    raw["kafka"]["bootstrap_servers"] = bootstrap
    raw["reference"] = {
        "locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml"),
    }
    raw.update(DEMO_TIMEOUTS)
    raw["metrics_port"] = 0
    path = tmp / "atpflow-demo.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _consume(config: Config, view: _View, stop: threading.Event) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from sinks.kafka import consumer_settings, to_raw

    topics = config.topics
    wanted = [topics.availability(c.id) for c in config.channels.channels]
    wanted += [topics.dead_letter, topics.milestones]
    avail = codec("AvailabilityRecord")
    letters = codec("DeadLetter")
    consumer = Consumer(consumer_settings(config.kafka, **{"enable.partition.eof": False}))
    parts = config.kafka.partitions
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in wanted for p in range(parts)])
    try:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            _show(to_raw(msg), view, topics, avail, letters)
    finally:
        consumer.close()


def _show(raw: Any, view: _View, topics: Any, avail: Any, letters: Any) -> None:
    with view.lock:
        view.records_out += 1
        view.last_output = time.monotonic()
        if raw.topic == topics.dead_letter:
            dl = letters.decode(raw.value)
            view.dead[dl["reason"]] += 1
            view.dead_recent = [*view.dead_recent, f"{dl['reason']}: {dl['detail']}"][-5:]
        elif raw.topic == topics.milestones:
            m = codec("ShipmentMilestone").decode(raw.value)
            where = f"shipment {m['shipment_id']}" if m.get("shipment_id") else "order"
            view.milestones = [*view.milestones, f"{m['channel']} {m['channel_order_id']}: "
                               f"{where} {m['milestone']}"][-8:]
        else:
            rec = avail.decode(raw.value)
            key = (rec["channel"], raw.key or rec["sku"])
            old = view.latest.get(key)
            if old is None or rec["version"] > old["version"]:
                view.latest[key] = rec
                view.changed_at[key] = time.monotonic()


def _render(view: _View, status: str) -> Group:
    table = Table(title="channel availability (live)", expand=False)
    table.add_column("channel")
    table.add_column("key", no_wrap=True)
    table.add_column("available", justify="right")
    table.add_column("was", justify="right")
    table.add_column("why: base x share - buffer (cap, min) <- cause", no_wrap=True)
    now = time.monotonic()
    with view.lock:
        for (channel, key), rec in sorted(view.latest.items()):
            fresh = now - view.changed_at[(channel, key)] < 1.0
            style = "bold green" if fresh else ""
            why = (f"{rec['base']} x {rec['share_pct']:g}% - {rec['buffer_units']} "
                   f"({rec['max_qty']}, {rec['min_qty']}) <- {rec['source']} {rec['source_id']}")
            table.add_row(channel, key, str(rec["available"]),
                          "-" if rec["previous"] is None else str(rec["previous"]), why, style=style)
        dead = Table(title="dead letters by reason")
        dead.add_column("reason")
        dead.add_column("count", justify="right")
        for reason, n in sorted(view.dead.items()):
            dead.add_row(reason, str(n))
        recent = "\n".join(view.dead_recent) or "(none yet)"
        parts: list[Any] = [Panel(status), table, dead, Panel(recent, title="newest dead letters")]
        if view.milestones:
            parts.append(Panel("\n".join(view.milestones), title="shipment milestones"))
    return Group(*parts)


def _publish_in_bursts(config: Config, fixtures: list[Path], bursts: int, pause: float,
                       on_burst: Any) -> int:
    from dataflows.fixtures import read_fixture, topic_schemas
    from sinks.kafka import CheckedProducer

    records = list(read_fixture(fixtures, topic_schemas(config)))
    size = max(1, -(-len(records) // bursts))
    with CheckedProducer(config.kafka) as producer:
        for i in range(0, len(records), size):
            for raw in records[i:i + size]:
                producer.send(raw.topic, raw.key, raw.value, headers=raw.headers)
            producer.flush()
            on_burst(min(i + size, len(records)), len(records))
            time.sleep(pause)
    return len(records)


def run_demo(console: Console | None = None) -> int:
    """The demo; returns an exit code."""
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    fixtures = sorted(SCENARIO_DIR.glob("*.jsonl"))
    with tempfile.TemporaryDirectory(prefix="atpflow-demo-") as tmp, LocalBroker() as broker:
        console.print(f"[bold]atpflow demo[/]: local broker (Tansu, memory storage) on "
                      f"{broker.bootstrap}, pid {broker.pid}")
        config_path = _write_config(Path(tmp), broker.bootstrap)
        config = load_config(config_path, environ={})
        from sinks.kafka import create_topics

        created, _ = create_topics(config)
        console.print(f"created {len(created)} topics")
        log = open(Path(tmp) / "dataflows.log", "w", encoding="utf-8")  # noqa: SIM115
        flows = subprocess.Popen(
            [sys.executable, "-m", "dataflows.cli", "run", "--config", str(config_path), "-w", "1",
             "--flow", "all"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "false"},
        )
        console.print(f"started the dataflows (atpflow run, pid {flows.pid})")
        view = _View()
        stop = threading.Event()
        consumer = threading.Thread(target=_consume, args=(config, view, stop), daemon=True)
        consumer.start()
        status = ["publishing the sample scenario..."]
        started = time.monotonic()
        published = 0
        try:
            with Live(_render(view, status[0]), console=console, refresh_per_second=4) as live:
                def on_burst(done: int, total: int) -> None:
                    status[0] = f"published {done}/{total} records ({', '.join(f.name for f in fixtures)})"
                    live.update(_render(view, status[0]))

                published = _publish_in_bursts(config, fixtures, bursts=4, pause=1.5, on_burst=on_burst)
                while time.monotonic() - started < MAX_SECONDS:
                    quiet = time.monotonic() - view.last_output
                    if flows.poll() is not None:
                        status[0] = f"the dataflows exited with code {flows.returncode}"
                        break
                    status[0] = (f"published {published} records; {view.records_out} output records so far; "
                                 f"waiting for gaps and parked items to time out ({quiet:.0f}s quiet)")
                    live.update(_render(view, status[0]))
                    if quiet > QUIET_SECONDS and view.records_out:
                        break
                    time.sleep(0.25)
                status[0] = (f"done: {published} records in, {view.records_out} records out, "
                             f"{sum(view.dead.values())} dead letters, in {time.monotonic() - started:.1f}s")
                live.update(_render(view, status[0]))
        except KeyboardInterrupt:
            console.print("interrupted: stopping everything")
        finally:
            stop.set()
            consumer.join(timeout=5)
            _stop(flows)
            log.close()
        console.print(f"stopped the dataflows (pid {flows.pid}) and the broker (pid {broker.pid})")
        failed = flows.returncode not in (0, -signal.SIGTERM, None)
        if failed or not view.records_out:
            console.print((Path(tmp) / "dataflows.log").read_text(encoding="utf-8")[-3000:])
            return 1
    return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
