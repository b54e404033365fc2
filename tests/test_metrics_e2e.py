"""Metrics end to end: scrape `/metrics` of a live `atpflow run` and check it against the run.

One fresh Tansu broker and one live availability run for the module (recovery on, so that
`atpflow lag` has positions), fed the hand-written availability fixtures. The counters must
match what was published, what `atpflow replay` of the same fixtures reports, and what is on
the output topics; the consumer lag (the gauge and `atpflow lag`) must fall to 0 once the
input is drained; SIGTERM must stop the run with exit code 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dataflows.broker import LocalBroker
from dataflows.config import SAMPLE_CONFIG, Config, load_config
from sinks.kafka import create_topics, iter_records

pytestmark = pytest.mark.kafka

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "availability").glob("*.jsonl"))
#: Short timeouts so that gaps and unknown items settle (as replay settles them at the end).
GAP_TIMEOUT, UNKNOWN_ITEM_TIMEOUT = 1.0, 2.0
T = TypeVar("T")


def _cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "dataflows.cli", *args],  # noqa: S603
                          capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"atpflow {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Callable[[], T], timeout: float, every: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


# -- scraping --------------------------------------------------------------------------------

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples | None:
    """Sample name -> [(labels, value)], or None while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels[label]: value for labels, value in samples.get(name, [])}


def total(samples: Samples, name: str) -> float:
    return sum(value for _labels, value in samples.get(name, []))


# -- the live run ----------------------------------------------------------------------------


@dataclass
class LiveRun:
    config: Config
    config_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    published: dict[str, int]
    lag_before: dict[str, Any]
    replay: dict[str, Any]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def scrape(self) -> Samples:
        samples = scrape(self.port)
        assert samples is not None, f"no /metrics on port {self.port}:\n{self.output()}"
        return samples

    def lag(self) -> dict[str, Any]:
        return json.loads(_cli("lag", "--config", str(self.config_path), "--json").stdout)


def _published(stdout: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\S+): (\d+)$", stdout, re.M)}


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM by pid (`atpflow run` forwards it to the dataflow), then the exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started for it, nothing else
        proc.wait()
        raise


@pytest.fixture(scope="module")
def run(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    tmp = tmp_path_factory.mktemp("metrics")
    port = _free_port()
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["kafka"]["bootstrap_servers"] = broker.bootstrap
    raw["reference"] = {"locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
                        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml")}
    raw.update(gap_timeout=f"{GAP_TIMEOUT}s", unknown_item_timeout=f"{UNKNOWN_ITEM_TIMEOUT}s",
               metrics_port=port)
    # Bytewax keeps its input positions in recovery snapshots only: `atpflow lag` reads them.
    raw["recovery"] = {"dir": str(tmp / "recovery"), "snapshot_interval": "1s"}
    config_path = tmp / "atpflow.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path, environ={})
    create_topics(config)
    _cli("recovery", "init", "--config", str(config_path), "--flow", "availability")

    replay = json.loads(_cli("replay", "--config", str(config_path), "--flow", "availability",
                             "--json", "--out", str(tmp / "replay"), *map(str, FIXTURES)).stdout)
    published = _published(
        _cli("publish", "--config", str(config_path), *map(str, FIXTURES)).stdout)
    lag_before = json.loads(_cli("lag", "--config", str(config_path), "--json").stdout)

    log = tmp / "run.log"
    env = {**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "true"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "dataflows.cli", "run", "--config", str(config_path),
             "--flow", "availability", "-w", "2"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    live = LiveRun(config, config_path, port, proc, log, published, lag_before, replay)
    try:
        yield live
    finally:
        if proc.poll() is None:
            _stop(proc)


@pytest.fixture(scope="module")
def drained(run: LiveRun) -> Samples:
    """The metrics once every input is read and every dead letter (timeouts too) is out."""
    want_in = sum(run.published.values())
    want_dead = sum(run.replay["dead_letters"].values())

    def settled() -> Samples | None:
        assert run.proc.poll() is None, f"atpflow run exited {run.proc.returncode}:\n{run.output()}"
        s = scrape(run.port)
        if s is None:
            return None
        lags = by_label(s, "atpflow_consumer_lag_messages", "partition")
        done = (total(s, "atpflow_records_in_total") >= want_in
                and total(s, "atpflow_dead_letters_total") >= want_dead
                and by_label(s, "atpflow_records_out_total", "topic").get(
                    run.config.topics.dead_letter, 0) >= want_dead
                and total(s, "atpflow_parked_records") == 0
                and total(s, "atpflow_reorder_buffered_records") == 0
                and len(lags) > 0 and not any(lags.values()))
        return s if done else None

    samples = _wait_for(settled, timeout=30)
    assert samples, f"the run did not drain within 30 s; last scrape:\n" \
                    f"{_summary(scrape(run.port) or {})}\n{run.output()}"
    return samples


def _summary(s: Samples) -> str:
    names = [n for n in s if n.startswith("atpflow_") and not n.endswith(("_bucket", "_created"))]
    return "\n".join(f"{n} {s[n]}" for n in sorted(names))


# -- tests -----------------------------------------------------------------------------------


def test_endpoint_serves_ours_and_bytewax_series(run: LiveRun, drained: Samples) -> None:
    assert any(name.startswith("bytewax_") for name in drained), "no Bytewax series on /metrics"
    assert "atpflow_records_in_total" in drained


def test_records_in_match_what_was_published(run: LiveRun, drained: Samples) -> None:
    assert sum(run.published.values()) == len([
        line for f in FIXTURES for line in f.read_text().splitlines() if line.strip()])
    assert by_label(drained, "atpflow_records_in_total", "topic") == run.published
    assert run.published == run.replay["records_in"]


def test_dead_letters_by_reason_match_replay(run: LiveRun, drained: Samples) -> None:
    live = {r: v for r, v in by_label(drained, "atpflow_dead_letters_total", "reason").items() if v}
    assert live == run.replay["dead_letters"]
    # And, to the record, what reached the topic.
    on_topic = sum(1 for _ in iter_records(run.config.kafka, [run.config.topics.dead_letter]))
    assert by_label(drained, "atpflow_records_out_total", "topic")[
        run.config.topics.dead_letter] == on_topic == sum(live.values())


def test_records_out_match_the_output_topics(run: LiveRun, drained: Samples) -> None:
    topics = [run.config.topics.availability(c.id) for c in run.config.channels.channels]

    def compare() -> tuple[dict[str, float], dict[str, float]]:
        metric = by_label(run.scrape(), "atpflow_records_out_total", "topic")
        on_topics = Counter(r.topic for r in iter_records(run.config.kafka, topics))
        return {t: metric.get(t, 0) for t in topics}, {t: on_topics[t] for t in topics}

    def equal() -> tuple[dict[str, float], dict[str, float]] | None:
        metric, on_topics = compare()
        return (metric, on_topics) if metric == on_topics else None

    # Counted right after each flush: equal once the sinks are idle.
    metric, on_topics = _wait_for(equal, timeout=10) or compare()
    assert metric == on_topics
    assert all(on_topics[t] > 0 for t in topics)


def test_latency_histograms_observed(run: LiveRun, drained: Samples) -> None:
    topics = {run.config.topics.availability(c.id) for c in run.config.channels.channels}
    for name in ("atpflow_input_to_output_latency_seconds",
                 "atpflow_event_time_to_output_latency_seconds"):
        counts = by_label(drained, f"{name}_count", "topic")
        assert set(counts) == topics, name
        assert all(n > 0 for n in counts.values()), counts
        assert all(v >= 0 for v in by_label(drained, f"{name}_sum", "topic").values())

    def latency_and_written() -> tuple[dict[str, float], dict[str, float]]:
        s = run.scrape()
        out = by_label(s, "atpflow_records_out_total", "topic")
        return (by_label(s, "atpflow_input_to_output_latency_seconds_count", "topic"),
                {t: out.get(t, 0) for t in topics})

    # One observation per availability record written (dead letters carry no timestamps). Both
    # move at the sink's checkpoints, one after the other: compare them once they have settled.
    def settled() -> tuple[dict[str, float], dict[str, float]] | None:
        observed, written = latency_and_written()
        return (observed, written) if observed == written else None

    observed, written = _wait_for(settled, timeout=10) or latency_and_written()
    assert observed == written


def test_event_time_lag_per_source(run: LiveRun, drained: Samples) -> None:
    lag = by_label(drained, "atpflow_event_time_lag_seconds", "source")
    assert set(lag) == {"wms", "erp"}, lag
    # The fixtures' event times are in the past; the gauge ages at scrape time.
    assert all(v > 0 for v in lag.values())
    later = by_label(run.scrape(), "atpflow_event_time_lag_seconds", "source")
    assert all(later[s] >= lag[s] for s in lag)


def test_consumer_lag_gauge_is_zero_for_every_partition(run: LiveRun, drained: Samples) -> None:
    lags = {(labels["topic"], labels["partition"]): v
            for labels, v in drained["atpflow_consumer_lag_messages"]}
    want = {(t, str(p)) for t in (run.config.topics.wms_transactions,
                                  run.config.topics.erp_documents)
            for p in range(run.config.kafka.partitions)} | {(run.config.topics.items, "0")}
    assert set(lags) == want
    assert all(v == 0 for v in lags.values()), lags


def test_atpflow_lag_goes_to_zero(run: LiveRun, drained: Samples) -> None:
    assert run.lag_before["total_lag"] == sum(run.published.values())

    def drained_lag() -> dict[str, Any] | None:
        report = run.lag()
        return report if report["total_lag"] == 0 else None

    # Positions come from recovery snapshots (every second here).
    report = _wait_for(drained_lag, timeout=10, every=0.5)
    assert report, run.lag()
    rows = report["partitions"]
    assert {r["flow"] for r in rows} == {"availability"}
    assert len(rows) == 2 * run.config.kafka.partitions + 1
    assert sum(r["end"] for r in rows) == sum(run.published.values())


def test_sigterm_stops_the_run_with_exit_0(run: LiveRun, drained: Samples) -> None:
    code = _stop(run.proc)
    assert code == 0, f"atpflow run exited {code}:\n{run.output()}"


# -- the lag computation itself, without a broker ------------------------------------------


class _FakeConsumer:
    def __init__(self, marks: tuple[int, int]) -> None:
        self.marks = marks

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        assert cached, "the lag gauge must not query the broker"
        return self.marks


class _FakePartition:
    def __init__(self, marks: tuple[int, int], position: int | None) -> None:
        self._consumer = _FakeConsumer(marks)
        self.position = position

    def next_batch(self) -> list[Any]:
        return []

    def snapshot(self) -> int | None:
        return self.position


@pytest.mark.parametrize(("marks", "position", "lag"), [
    ((0, 10), 4, 6),          # behind
    ((0, 10), 10, 0),         # drained
    ((3, 10), -2, 7),         # nothing read yet (OFFSET_BEGINNING): from the low watermark
    ((0, 10), 12, 0),         # a stale watermark never makes it negative
    ((-1001, -1001), 4, None),  # no fetch response yet: left unset
])
def test_consumer_lag_from_cached_watermarks(
    marks: tuple[int, int], position: int, lag: int | None
) -> None:
    from operators import metrics
    from sinks.kafka import _RawPartition

    topic = f"lag.unit.{marks[0]}.{marks[1]}.{position}"
    part = _RawPartition(_FakePartition(marks, position), topic, 0)  # type: ignore[arg-type]
    part.next_batch()
    values = [s.value for family in metrics.CONSUMER_LAG.collect() for s in family.samples
              if s.labels == {"topic": topic, "partition": "0"}]
    assert values == ([] if lag is None else [lag])
