"""Kafka plumbing against a real (Tansu) broker: topics, source, sink, CLI commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from dataflows.broker import LocalBroker
from dataflows.commands_kafka import check_brokers, main, parse_since
from dataflows.config import Config
from dataflows.fixtures import read_fixture, topic_schemas
from operators.records import REPLAYED_HEADER, Output, RawRecord
from schemas import codec
from sinks import kafka as kafka_module
from sinks.kafka import (
    BrokerUnavailable,
    CheckedProducer,
    DeliveryError,
    KafkaOutputSink,
    KafkaRawSource,
    consumer_settings,
    create_topics,
    iter_records,
    kafka_output,
    key_partition,
    murmur2,
    topic_specs,
)

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "availability"


def make_topic(config: Config, name: str, partitions: int = 3) -> str:
    admin = AdminClient({"bootstrap.servers": config.kafka.bootstrap_servers})
    spec = NewTopic(name, partitions, 1,
                    config={"cleanup.policy": "delete", "retention.ms": "3600000"})
    for fut in admin.create_topics([spec]).values():
        fut.result()
    return name


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def topics(broker_config: Config) -> tuple[list[str], list[str]]:
    """Every atpflow topic, created once for the module (the first call of create_topics)."""
    return create_topics(broker_config)


# -- no broker needed -----------------------------------------------------------


def test_murmur2_matches_the_java_client() -> None:
    # Vectors from Kafka's own UtilsTest (signed 32-bit there).
    def signed(x: int) -> int:
        return x - (1 << 32) if x >= 1 << 31 else x

    assert signed(murmur2(b"21")) == -973932308
    assert signed(murmur2(b"foobar")) == -790332482
    assert signed(murmur2(b"a-little-bit-long-string")) == -985981536
    assert signed(murmur2(b"a-little-bit-longer-string")) == -1486304829
    assert signed(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")) == -58897971
    assert signed(murmur2(bytes([ord("a"), ord("b"), ord("c")]))) == 479470107


def test_group_sends_every_output_to_the_partition_its_key_routes_to() -> None:
    sink = KafkaOutputSink({"bootstrap.servers": "127.0.0.1:9"}, parts=5)
    outs = [Output("t", None if i % 7 == 0 else f"SKU-{i % 40}", "s", {"i": i}) for i in range(300)]
    groups = sink.group(outs)
    assert len(groups) == len({g for g, _ in groups}) <= 5
    seen = []
    for route_key, members in groups:
        part = sink.part_fn(route_key) % 5
        assert all(sink.part_fn(o.key or "") % 5 == part for o in members)
        seen += members
    assert sorted(o.value["i"] for o in seen) == list(range(300))
    for key in {o.key for o in outs}:  # order per key kept
        assert [o for o in seen if o.key == key] == [o for o in outs if o.key == key]


@pytest.mark.parametrize("compiled", [True, False])
def test_bulk_histogram_observation_equals_observing_each_value(
    compiled: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from sinks.kafka import _observe_many

    if not compiled:
        monkeypatch.setattr(kafka_module, "_kafka", None)
    registry = CollectorRegistry()
    buckets = (0.005, 0.05, 0.5, 1.0, 5.0)
    one = Histogram("one", "h", buckets=buckets, registry=registry)
    bulk = Histogram("bulk", "h", buckets=buckets, registry=registry)
    now_ms = 1_767_225_600_000.0
    # on the bounds, either side of them, repeated, beyond the last, and in the future
    stamps = [now_ms - d for d in (0, 1, 5, 5, 5, 50, 499, 500, 501, 999, 1000, 4999, 70000, -3)]
    stamps += [int(now_ms) - d for d in range(0, 6000, 7)]
    for ts in stamps:
        one.observe((now_ms - ts) / 1000)
    _observe_many(bulk, now_ms, stamps)

    def samples(name: str) -> dict:
        return {(s.name.removeprefix(name), s.labels.get("le")): s.value
                for m in registry.collect() if m.name == name for s in m.samples
                if not s.name.endswith("_created")}

    assert samples("bulk") == pytest.approx(samples("one"))
    _observe_many(bulk, now_ms, [])  # nothing to observe: no change
    assert samples("bulk") == pytest.approx(samples("one"))


def test_written_metrics_count_every_record_and_keep_the_newest_event_time_per_source() -> None:
    from operators import metrics
    from sinks.kafka import _newest_event_ms, _observe_stats, _written_stats

    now_ms = time.time() * 1000
    outs = [Output("t-metrics", "k", "s", {}, int(now_ms) - 1000, 5, "src-a"),
            Output("t-metrics", "k", "s", {}, int(now_ms) - 1000, 9, "src-a"),
            Output("t-metrics", "k", "s", {"source": "src-b"}, None, 7, None),
            Output("t-metrics", "k", "s", {}, None, None, None)]
    before = metrics.RECORDS_OUT.labels("t-metrics")._value.get()
    _observe_stats(_written_stats(outs), time.time() * 1000)
    assert metrics.RECORDS_OUT.labels("t-metrics")._value.get() - before == 4
    assert _newest_event_ms["src-a"] == 9
    assert _newest_event_ms["src-b"] == 7  # named only in its value
    latency = metrics.INPUT_TO_OUTPUT_LATENCY.labels("t-metrics")
    assert sum(b.get() for b in latency._buckets) == 2  # the two records with an input timestamp
    assert 1.9 < latency._sum.get() < 2.5


def test_written_metrics_keep_the_newest_event_time_of_each_source_in_a_mixed_batch() -> None:
    from sinks.kafka import _newest_event_ms, _observe_stats, _written_stats

    now_ms = int(time.time() * 1000)
    times = {"src-c": [now_ms - 50_000 + 7 * i for i in range(300)],
             "src-d": [now_ms - 90_000 + 11 * i for i in range(300)]}
    outs = [Output("t-mixed", "k", "s", {}, now_ms, et, source)
            for pair in zip(times["src-c"][::-1], times["src-d"], strict=True)
            for source, et in zip(("src-c", "src-d"), pair, strict=True)]
    _observe_stats(_written_stats(outs), time.time() * 1000)
    assert _newest_event_ms["src-c"] == max(times["src-c"])
    assert _newest_event_ms["src-d"] == max(times["src-d"])


def test_parse_since() -> None:
    now = 1_767_225_600_000
    assert parse_since("2h", now) == now - 7_200_000
    assert parse_since("1767225600000") == now
    assert parse_since("2026-01-01T00:00:00Z") == now
    assert parse_since("2026-01-01T00:00:00") == now  # naive = UTC


def test_register_reuses_the_callers_shared_options() -> None:
    import argparse

    from dataflows.commands_kafka import register

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument("--bootstrap")
    parser = argparse.ArgumentParser(prog="atpflow")
    register(parser.add_subparsers(dest="command", required=True), parents=[common])
    args = parser.parse_args(["dead-letters", "replay", "--bootstrap", "h:1", "--config", "c.yaml",
                              "--reason", "UNKNOWN_ITEM", "--since", "2026-01-01T00:00:00Z"])
    assert (args.bootstrap, args.config, args.reason) == ("h:1", "c.yaml", ["UNKNOWN_ITEM"])
    assert args.since == 1_767_225_600_000 and callable(args.func)
    args = parser.parse_args(["lag", "--group", "g"])
    assert args.group == "g" and args.connect_timeout == 10


# -- topics ---------------------------------------------------------------------


def test_topics_create_is_idempotent_with_explicit_configs(
    broker_config: Config, topics: tuple[list[str], list[str]]
) -> None:
    created, existed = topics
    names = [s.name for s in topic_specs(broker_config)]
    assert created == names and existed == []
    assert create_topics(broker_config) == ([], names)
    admin = AdminClient({"bootstrap.servers": broker_config.kafka.bootstrap_servers})
    md = admin.list_topics(timeout=5).topics
    assert len(md["ref.items"].partitions) == 1
    assert len(md["wms.inventory.transactions"].partitions) == broker_config.kafka.partitions
    res = [ConfigResource("topic", t) for t in
           ("ref.items", "availability.amazon-us", "wms.inventory.transactions")]
    configs = {r.name: {k: v.value for k, v in f.result().items()}
               for r, f in admin.describe_configs(res).items()}
    assert configs["ref.items"]["cleanup.policy"] == "compact"
    assert configs["availability.amazon-us"]["cleanup.policy"] == "compact"
    assert configs["wms.inventory.transactions"]["cleanup.policy"] == "delete"
    assert int(configs["wms.inventory.transactions"]["retention.ms"]) > 0


def test_topics_create_command_reports(
    broker_config: Config, topics: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "topics", "create", "--bootstrap",
                           broker_config.kafka.bootstrap_servers)
    assert code == 0
    assert "0 created, 11 already existed" in out and "existed   ref.items" in out


# -- publish / record -------------------------------------------------------------


def test_fixture_publish_record_round_trip(
    broker_config: Config, topics: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = ("--bootstrap", broker_config.kafka.bootstrap_servers)
    src = tmp_path / "in.jsonl"
    lines = [json.loads(x) for f in ("movements.jsonl", "dead_letters.jsonl")
             for x in (FIXTURES / f).read_text().splitlines() if x.strip()]
    lines[3]["headers"] = {"trace": "abc"}
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    wanted = sorted({x["topic"] for x in lines})

    code, out, _ = run_cli(capsys, "publish", *bootstrap, str(src))
    assert code == 0 and f"published {len(lines)} record(s)" in out

    rec = tmp_path / "rec.jsonl"
    argv = [a for t in wanted for a in ("--topic", t)]
    code, out, _ = run_cli(capsys, "record", *bootstrap, *argv, "--from-beginning",
                           "--out", str(rec))
    assert code == 0 and f"recorded {len(lines)} record(s)" in out

    schemas = topic_schemas(broker_config)

    def per_key(path: Path) -> dict[tuple[str, str | None], list[Any]]:
        out: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
        for r in read_fixture(path, schemas):
            out[(r.topic, r.key)].append((r.value, r.headers))
        return dict(out)

    # Same bytes, same headers, same order per key (partitions interleave keys).
    # Bytes, not JSON text: "98" and "98.000" are the same decimal(scale 3).
    assert per_key(rec) == per_key(src)
    for r in read_fixture(rec, schemas):
        assert r.key is not None
        assert r.partition == key_partition(r.key.encode(), 1 if r.topic == "ref.items" else 3)

    code, out, _ = run_cli(capsys, "record", *bootstrap, "--topic", "ref.items",
                           "--from-beginning", "--max", "1", "--out", str(rec))
    assert code == 0 and len(rec.read_text().splitlines()) == 1


def test_publish_refuses_missing_topics_and_bad_lines(
    broker_config: Config, topics: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = ("--bootstrap", broker_config.kafka.bootstrap_servers)
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"topic": "no.such.topic", "key": "k", "value_b64": "AA=="}) + "\n")
    code, _, err = run_cli(capsys, "publish", *bootstrap, str(f))
    assert code == 1 and "no.such.topic" in err
    f.write_text('{"topic": "ref.items", "key": "k", "value_b64": "AA=="}\n{bad\n')
    code, _, err = run_cli(capsys, "publish", *bootstrap, str(f))
    assert code == 1 and "x.jsonl:2" in err
    code, _, err = run_cli(capsys, "publish", *bootstrap, str(tmp_path / "missing.jsonl"))
    assert code == 2 and "fixture not found" in err


# -- source -------------------------------------------------------------------------


def test_source_reads_every_partition_with_two_workers(broker_config: Config) -> None:
    t1 = make_topic(broker_config, "source.a", 3)
    t2 = make_topic(broker_config, "source.b", 2)
    with CheckedProducer(broker_config.kafka) as p:
        for i in range(60):
            p.send(t1 if i % 3 else t2, f"key-{i % 7}", b"v%d" % i, headers=[("n", b"%d" % i)])
    out: list[RawRecord] = []
    workers: set[int] = set()
    flow = Dataflow("source_test")
    s = op.input("in", flow, KafkaRawSource(broker_config.kafka, [t1, t2], stop_at_eof=True))
    s = op.inspect_debug("who", s, lambda _s, _x, _e, worker: workers.add(worker))
    op.output("out", s, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    assert len(out) == 60 and workers == {0, 1}
    assert {(r.topic, r.partition) for r in out} == {(t1, 0), (t1, 1), (t1, 2), (t2, 0), (t2, 1)}
    for r in out:
        n = int(r.value[1:])
        assert r.key == f"key-{n % 7}" and r.headers == (("n", str(n).encode()),)
        assert r.timestamp and r.timestamp > 1_700_000_000_000
        assert r.partition == key_partition(r.key.encode(), 3 if r.topic == t1 else 2)
    by_part: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in out:
        by_part[(r.topic, r.partition)].append(r.offset)
    assert all(v == list(range(len(v))) for v in by_part.values())


def test_source_reads_records_directly_exactly_as_the_stock_partition_gives_them(
    broker_config: Config,
) -> None:
    topic = make_topic(broker_config, "source.direct", 1)
    with CheckedProducer(broker_config.kafka) as p:
        for i in range(2500):  # three batches of the source's 1,000
            p.send(topic, None if i % 5 == 0 else f"k-{i % 9}", None if i % 7 == 0 else b"v%d" % i,
                   headers=[("n", b"%d" % i)] if i % 2 else (), partition=0)
    src = KafkaRawSource(broker_config.kafka, [topic], stop_at_eof=True)

    def read(how: str, resume: int | None) -> tuple[list[RawRecord], int | None]:
        """`how`: stock (Bytewax's messages converted), direct (our loop), compiled (its twin)."""
        part = src.build_part("s", f"0-{topic}", resume)
        assert part._direct
        part._direct = how != "stock"
        out: list[RawRecord] = []
        with pytest.MonkeyPatch.context() as mp:
            if how == "direct":
                mp.setattr(kafka_module, "_kafka", None)
            try:
                while True:
                    out += part.next_batch()
            except StopIteration:
                pass
        state = part.snapshot()
        part.close()
        return out, state

    stock = read("stock", None)
    assert len(stock[0]) == 2500
    for how in ("direct", "compiled"):
        assert read(how, None) == stock  # the records, and the offset to resume from
        assert read(how, 1234) == read("stock", 1234)  # resuming mid-topic
        assert read(how, 1234)[0][0].offset == 1234


def test_source_names_missing_topics(broker_config: Config) -> None:
    from sinks.kafka import MissingTopicError

    with pytest.raises(MissingTopicError, match="not.there"):
        KafkaRawSource(broker_config.kafka, ["not.there"]).list_parts()


# -- sink -----------------------------------------------------------------------------


def letter(n: int) -> dict[str, Any]:
    return {"reason": "UNKNOWN_ITEM", "detail": str(n), "topic": "t", "partition": None,
            "offset": None, "key": None, "value": None, "source_id": None, "gap": None}


def test_sink_keeps_order_per_key_and_partitions_by_murmur2(broker_config: Config) -> None:
    topic = make_topic(broker_config, "sink.order", 3)
    keys = [f"SKU-{k}" for k in range(25)]
    items = [Output(topic, key, "DeadLetter", letter(n)) for n in range(40) for key in keys]
    flow = Dataflow("sink_test")
    s = op.input("in", flow, TestingSource(items, batch_size=37))
    kafka_output("out", s, KafkaOutputSink(broker_config.kafka, parts=4))
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    dl = codec("DeadLetter")
    seen: dict[str, list[int]] = defaultdict(list)
    for raw in iter_records(broker_config.kafka, [topic]):
        assert raw.key is not None and raw.partition == key_partition(raw.key.encode(), 3)
        seen[raw.key].append(int(dl.decode(raw.value or b"")["detail"]))
    assert seen == {key: list(range(40)) for key in keys}


def test_sink_queues_each_batch_and_confirms_and_counts_them_at_the_checkpoint(
        broker: LocalBroker, broker_config: Config) -> None:
    from operators import metrics

    topic = make_topic(broker_config, "sink.checkpoint", 1)
    sink = KafkaOutputSink(broker_config.kafka, parts=1)
    sink.list_parts()
    part = sink.build_part("out", "kafka-out-0000", None)
    counted = metrics.RECORDS_OUT.labels(topic)._value.get

    def written() -> list[int]:
        return [r.offset for r in iter_records(broker_config.kafka, [topic])]

    before = counted()
    part.write_batch([[Output(topic, "k", "DeadLetter", letter(n)) for n in range(3)]])
    assert counted() == before  # queued, not acknowledged yet
    part.snapshot()  # the checkpoint: the cluster has them, then they count
    assert counted() == before + 3 and written() == [0, 1, 2]

    # A delivery that fails is not counted: the checkpoint raises before the epoch commits.
    failing = KafkaOutputSink(broker_config.kafka, parts=1,
                              add_config={"message.timeout.ms": 1000}).build_part("out", "p", None)
    failing.write_batch([[Output(topic, "k", "DeadLetter", letter(8))]])  # knows the topic
    failing.snapshot()
    before += 1
    broker.freeze()
    try:
        failing.write_batch([[Output(topic, "k", "DeadLetter", letter(9))]])
        with pytest.raises(DeliveryError, match="Kafka delivery failed"):
            failing.snapshot()
    finally:
        broker.thaw()
    assert counted() == before + 3
    part.close()


def test_sink_failed_delivery_stops_the_dataflow(broker: LocalBroker,
                                                 broker_config: Config) -> None:
    topic = make_topic(broker_config, "sink.fail", 1)
    first, second = (Output(topic, "k", "DeadLetter", letter(n)) for n in (1, 2))

    def freeze_on_second(out: Output) -> Output:
        if out.value["detail"] == "2":
            # The sink sends in the background and confirms at checkpoints: let the first
            # record arrive before the cluster stops answering.
            deadline = time.monotonic() + 5
            while not list(iter_records(broker_config.kafka, [topic])):
                assert time.monotonic() < deadline, "the first record never arrived"
                time.sleep(0.05)
            broker.freeze()
        return out

    flow = Dataflow("sink_fail")
    s = op.input("in", flow, TestingSource([first, TestingSource.PAUSE(timedelta(seconds=0.3)),
                                            second]))
    s = op.map("freeze", s, freeze_on_second)
    sink = KafkaOutputSink(broker_config.kafka, parts=1, add_config={"message.timeout.ms": 1500})
    kafka_output("out", s, sink)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as info:
            run_main(flow)
    finally:
        broker.thaw()
    assert time.monotonic() - started < 10
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("Kafka delivery failed" in m for m in chain), chain
    # The second was never counted as written: its checkpoint raised. (The frozen broker may
    # still take it once thawed; a repeat is what at-least-once allows, a loss is not.)
    assert [r.offset for r in iter_records(broker_config.kafka, [topic])][:1] == [0]


# -- dead letters -------------------------------------------------------------------------


def test_dead_letters_list_and_replay_once(
    broker_config: Config, topics: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = ("--bootstrap", broker_config.kafka.bootstrap_servers)
    t = broker_config.topics
    dl = codec("DeadLetter")

    def dead(reason: str, topic: str, partition: int | None, offset: int | None,
             value: bytes | None, key: str = "DC-ATL|ITM-9") -> bytes:
        return dl.encode({"reason": reason, "detail": f"{reason} detail", "topic": topic,
                          "partition": partition, "offset": offset, "key": key,
                          "value": value, "source_id": "T9", "gap": None})

    with CheckedProducer(broker_config.kafka) as p:
        unknown = dead("UNKNOWN_ITEM", t.wms_transactions, 1, 500, b"orig")
        p.send(t.dead_letter, "DC-ATL|ITM-9", unknown)
        # The same original again (a recovery repeat): still one record to replay.
        p.send(t.dead_letter, "DC-ATL|ITM-9", unknown)
        p.send(t.dead_letter, "P1|M1",
               dead("UNDECODABLE", t.erp_documents, 0, 7, b"\x00junk", "P1|M1"))
        p.send(t.dead_letter, "wms|DC-ATL|ITM-9",
               dead("SEQUENCE_GAP", t.wms_transactions, None, None, None),
               timestamp=int(time.time() * 1000) + 1000)  # clearly the newest

    code, out, _ = run_cli(capsys, "dead-letters", "list", *bootstrap, "--json")
    listed = json.loads(out)
    assert code == 0 and listed["total"] == 4
    assert listed["by_reason"] == {"UNKNOWN_ITEM": 2, "UNDECODABLE": 1, "SEQUENCE_GAP": 1}
    assert listed["by_topic"] == {t.wms_transactions: 3, t.erp_documents: 1}
    assert listed["newest"][0]["reason"] == "SEQUENCE_GAP"
    code, out, _ = run_cli(capsys, "dead-letters", "list", *bootstrap, "--reason", "UNDECODABLE",
                           "--since", "1h")
    assert code == 0 and "1 matching" in out and "UNDECODABLE" in out

    code, out, _ = run_cli(capsys, "dead-letters", "replay", *bootstrap, "--reason",
                           "UNKNOWN_ITEM", "--json")
    first = json.loads(out)
    assert code == 0 and first["replayed"] == 1 and first["already_replayed"] == 1

    code, out, _ = run_cli(capsys, "dead-letters", "replay", *bootstrap, "--json")
    second = json.loads(out)
    assert second["replayed"] == 1 and second["by_topic"] == {t.erp_documents: 1}
    assert second["already_replayed"] == 2 and second["not_replayable"] == {"SEQUENCE_GAP": 1}

    code, out, _ = run_cli(capsys, "dead-letters", "replay", *bootstrap, "--json")
    assert json.loads(out)["replayed"] == 0

    replayed = [r for r in iter_records(broker_config.kafka, [t.wms_transactions, t.erp_documents])
                if r.replayed]
    assert sorted((r.topic, r.partition, r.key, r.value) for r in replayed) == [
        (t.erp_documents, 0, "P1|M1", b"\x00junk"),
        (t.wms_transactions, 1, "DC-ATL|ITM-9", b"orig"),
    ]
    header = dict(replayed[0].headers)[REPLAYED_HEADER].decode()
    assert header.startswith(f"{t.dead_letter}/")

    code, out, _ = run_cli(capsys, "dead-letters", "list", *bootstrap, "--json")
    assert all(e["replayed"] for e in json.loads(out)["newest"] if e["reason"] != "SEQUENCE_GAP")


# -- lag ---------------------------------------------------------------------------------------


def test_lag_from_recovery_snapshots_and_groups(
    broker_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = ("--bootstrap", broker_config.kafka.bootstrap_servers)
    topic = make_topic(broker_config, "lag.topic", 2)
    with CheckedProducer(broker_config.kafka) as p:
        for i in range(10):
            p.send(topic, None, b"x", partition=i % 2)

    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    flow = Dataflow("lag_test")
    s = op.input("in", flow, KafkaRawSource(broker_config.kafka, [topic], stop_at_eof=True))
    op.output("out", s, TestingSink([]))
    run_main(flow, epoch_interval=timedelta(seconds=0.1), recovery_config=RecoveryConfig(db))

    with CheckedProducer(broker_config.kafka) as p:
        for _ in range(3):
            p.send(topic, None, b"y", partition=1)

    code, out, _ = run_cli(capsys, "lag", *bootstrap, "--topic", topic, "--recovery", str(db),
                           "--json")
    report = json.loads(out)
    assert code == 0 and report["total_lag"] == 3
    assert [(r["partition"], r["end"], r["position"], r["lag"]) for r in report["partitions"]] == [
        (0, 5, 5, 0), (1, 8, 5, 3)]

    code, out, _ = run_cli(capsys, "lag", *bootstrap, "--topic", topic)
    assert code == 0 and "total lag: 13" in out and "end offsets only" in out

    consumer = Consumer(consumer_settings(broker_config.kafka, **{"group.id": "lag-group"}))
    consumer.commit(offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 8)],
                    asynchronous=False)
    consumer.close()
    code, out, _ = run_cli(capsys, "lag", *bootstrap, "--topic", topic, "--group", "lag-group",
                           "--json")
    assert code == 0 and json.loads(out)["total_lag"] == 3


def test_local_broker_freezes_thaws_and_stops_by_pid() -> None:
    import os

    with LocalBroker() as b:
        pid = b.pid
        assert pid is not None and b.running
        b.freeze()
        b.thaw()
        assert AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=5).brokers
        b.freeze()  # stop() must still end a frozen broker
    assert not b.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- unreachable broker ------------------------------------------------------------------------


def test_check_brokers_names_the_address(broker_config: Config) -> None:
    dead = broker_config.model_copy(deep=True)
    dead.kafka.bootstrap_servers = "127.0.0.1:1"
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1 within 1 s"):
        check_brokers(dead, timeout=1)


def test_bad_bootstrap_exits_2_with_a_clear_message() -> None:
    started = time.monotonic()
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "dataflows.commands_kafka", "topics", "create",
         "--bootstrap", "127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )
    assert time.monotonic() - started < 15
    assert proc.returncode == 2
    assert "no Kafka broker answered at 127.0.0.1:1" in proc.stderr
