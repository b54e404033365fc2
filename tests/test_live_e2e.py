"""End to end on a real broker: `atpflow run` with 2 workers against `atpflow replay`.

One Tansu broker and one live run for the module (started and stopped by pid);
each test publishes its own keys.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dataflows.broker import LocalBroker
from dataflows.config import SAMPLE_CONFIG, Config, load_config
from schemas import codec
from sinks.kafka import create_topics, iter_records

pytestmark = pytest.mark.kafka

FIXTURES = Path(__file__).parent / "fixtures" / "availability"
ALL_FIXTURES = [FIXTURES / f"{n}.jsonl" for n in ("movements", "dead_letters", "ordering", "channels")]
GAP_TIMEOUT = 1.0


def _cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], capture_output=True,
                          text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def live_config_path(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["kafka"]["bootstrap_servers"] = broker.bootstrap
    raw["reference"] = {"locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
                        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml")}
    raw.update(gap_timeout=f"{GAP_TIMEOUT}s", unknown_item_timeout="2s")
    path = tmp_path_factory.mktemp("live") / "atpflow.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def live(live_config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    config = load_config(live_config_path, environ={})
    create_topics(config)
    log = open(tmp_path_factory.mktemp("logs") / "run.log", "w+")  # noqa: SIM115
    env = {**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run", "--config", str(live_config_path),
         "--flow", "availability", "-w", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        yield config
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
        assert code == 0, f"atpflow run exited {code}:\n{output[-3000:]}"


def _outputs(config: Config) -> tuple[dict, list[dict]]:
    """Last available per (topic, key) by version, and every dead letter, as on the topics."""
    topics = [config.topics.availability(c.id) for c in config.channels.channels]
    avail = codec("AvailabilityRecord")
    best: dict[tuple[str, str], tuple[int, int]] = {}
    for raw in iter_records(config.kafka, topics):
        rec = avail.decode(raw.value)
        k = (raw.topic, raw.key)
        if k not in best or rec["version"] > best[k][0]:
            best[k] = (rec["version"], rec["available"])
    letters = [codec("DeadLetter").decode(r.value) for r in iter_records(config.kafka, [config.topics.dead_letter])]
    return {k: v for k, (_, v) in best.items()}, letters


def _replay_outputs(tmp: Path, *fixtures: Path) -> tuple[dict, list[dict]]:
    out = tmp / "replay"
    _cli("replay", "--flow", "availability", "--out", str(out), *map(str, fixtures))
    last: dict[tuple[str, str], int] = {}
    letters = []
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            o = json.loads(line)
            if path.stem.startswith("availability."):
                last[(path.stem, o["key"])] = o["value"]["available"]
            elif path.stem.endswith("dead-letter"):
                letters.append(o["value"])
    return last, letters


def _letter_ids(letters: list[dict]) -> list[tuple]:
    return sorted((dl["reason"], dl["key"] or "", dl["source_id"] or "") for dl in letters)


def _wait_for(check, timeout: float = 30.0, every: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def test_live_run_with_two_workers_matches_replay(live: Config, live_config_path: Path, tmp_path: Path) -> None:
    expected, expected_letters = _replay_outputs(tmp_path, *ALL_FIXTURES)
    _cli("publish", "--config", str(live_config_path), *map(str, ALL_FIXTURES))

    def converged() -> tuple[dict, list[dict]] | None:
        last, letters = _outputs(live)
        mine = {k: v for k, v in last.items() if k in expected}
        return (mine, letters) if mine == expected and len(letters) >= len(expected_letters) else None

    result = _wait_for(converged, timeout=40)
    last, letters = result or _outputs(live)
    assert {k: v for k, v in last.items() if k in expected} == expected
    assert _letter_ids([dl for dl in letters if dl["reason"] != "SEQUENCE_GAP"]) == \
        _letter_ids([dl for dl in expected_letters if dl["reason"] != "SEQUENCE_GAP"])
    gaps = lambda ls: sorted(json.dumps(dl["gap"], sort_keys=True) for dl in ls if dl["reason"] == "SEQUENCE_GAP")  # noqa: E731
    assert gaps(letters) == gaps(expected_letters)


def _publish_lines(config_path: Path, tmp: Path, lines: list[dict]) -> None:
    path = tmp / f"lines-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _cli("publish", "--config", str(config_path), str(path))


def _wms(txn: str, item: str, seq: int, qty: int = 5) -> dict:
    return {"topic": "wms.inventory.transactions", "key": f"DC-DAL|{item}", "value": {
        "txn_id": txn, "facility": "DC-DAL", "item": item, "txn_type": "RECEIPT", "qty": qty,
        "uom": "EA", "seq": seq, "event_time": 1767225600000 + seq, "order_ref": None}}


def _item(sku: str, item: str) -> dict:
    return {"topic": "ref.items", "key": sku, "value": {
        "sku": sku, "wms_item": item, "erp_material": f"M-{item}", "base_uom": "EA",
        "uom_factors": {"EA": 1}, "active": True, "updated_at": 1767225600000}}


def test_gap_that_never_fills_is_dead_lettered_within_gap_timeout(live: Config, live_config_path: Path,
                                                                   tmp_path: Path) -> None:
    _publish_lines(live_config_path, tmp_path, [_item("SKU-GAP", "ITM-GAP"), _wms("G1", "ITM-GAP", 1)])
    _publish_lines(live_config_path, tmp_path, [_wms("G3", "ITM-GAP", 3)])
    # The gap opens when G3 reaches the broker: its own timestamp is the start of the clock.
    g3 = [r for r in iter_records(live.kafka, [live.topics.wms_transactions])
          if r.value and b"G3" in r.value
          and codec("WmsInventoryTransaction").decode(r.value)["txn_id"] == "G3"]
    assert g3 and g3[0].timestamp is not None
    published = g3[0].timestamp / 1000

    def gap_letter():  # type: ignore[no-untyped-def]
        for raw in iter_records(live.kafka, [live.topics.dead_letter]):
            dl = codec("DeadLetter").decode(raw.value)
            if dl["reason"] == "SEQUENCE_GAP" and dl["gap"]["stream"] == "wms|DC-DAL|ITM-GAP":
                return raw, dl
        return None

    found = _wait_for(gap_letter, timeout=15, every=0.1)
    assert found, "no SEQUENCE_GAP dead letter"
    raw, dl = found
    assert dl["gap"] == {"stream": "wms|DC-DAL|ITM-GAP", "missing_from": 2, "missing_to": 2}
    assert raw.timestamp is not None
    waited = raw.timestamp / 1000 - published
    # The clock starts when the job sees G3, after the broker got it; the slack covers that
    # delivery and the timer's wake-up on 2 cores shared with the rest of the suite
    # (once 1.0 s was not enough there). A wait that never fired fails above.
    assert waited <= GAP_TIMEOUT + 2.0, f"SEQUENCE_GAP {waited:.2f} s after the record that opened the gap"


def test_replayed_unknown_item_applies_once(live: Config, live_config_path: Path, tmp_path: Path) -> None:
    _publish_lines(live_config_path, tmp_path, [_wms("L1", "ITM-LATE", 1, qty=9)])

    def dead_lettered() -> bool:
        return any(dl["reason"] == "UNKNOWN_ITEM" and dl["source_id"] == "L1" for dl in _outputs(live)[1])

    assert _wait_for(dead_lettered, timeout=15)
    # Fix the cause, and wait until the dataflow knows it (a later movement of the item
    # applies): a dead letter replayed before its item arrives would only park again.
    _publish_lines(live_config_path, tmp_path, [_item("SKU-LATE", "ITM-LATE"), _wms("L2", "ITM-LATE", 2, qty=1)])
    key = ("availability.b2b-portal", "SKU-LATE")
    assert _wait_for(lambda: _outputs(live)[0].get(key) == 1, timeout=15), _outputs(live)[0].get(key)
    first = _cli("dead-letters", "replay", "--config", str(live_config_path), "--reason", "UNKNOWN_ITEM")
    assert re.match(r"replayed [1-9]", first.stdout), first.stdout
    assert _wait_for(lambda: _outputs(live)[0].get(key) == 10, timeout=15), _outputs(live)[0].get(key)
    # Replaying again sends L1 no more (the fixture's never-known item, dead-lettered anew
    # after its own replay, is a new dead letter and may go back once more).
    again = _cli("dead-letters", "replay", "--config", str(live_config_path), "--reason", "UNKNOWN_ITEM")
    assert re.search(r"[1-9]\d* already replayed", again.stdout), again.stdout
    time.sleep(2.5)
    assert _outputs(live)[0].get(key) == 10, "the replayed record applied twice"


def test_record_then_replay_equals_replay_of_the_original(live: Config, live_config_path: Path,
                                                         tmp_path: Path) -> None:
    # The module's live test published ALL_FIXTURES (and more): record the inputs back.
    recording = tmp_path / "recorded.jsonl"
    _cli("record", "--config", str(live_config_path), "--topic", "ref.items", "--topic",
         "wms.inventory.transactions", "--topic", "erp.inventory.documents", "--from-beginning",
         "--out", str(recording))
    lines = [json.loads(line) for line in recording.read_text().splitlines()]
    assert any("value_b64" in line for line in lines), "undecodable bytes must be kept as value_b64"
    original, _ = _replay_outputs(tmp_path / "orig", *ALL_FIXTURES)
    recorded, _ = _replay_outputs(tmp_path / "rec", recording)
    assert {k: v for k, v in recorded.items() if k in original} == original


def test_run_against_no_broker_exits_nonzero_naming_the_address() -> None:
    started = time.monotonic()
    proc = _cli("run", "--bootstrap", "127.0.0.1:1", "--flow", "availability", check=False, timeout=30)
    assert proc.returncode != 0
    assert time.monotonic() - started < 15
    assert "127.0.0.1:1" in proc.stderr


def test_run_with_a_bad_config_field_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SAMPLE_CONFIG.read_text().replace("max_buffered: 1000", "max_buffered: -5"))
    proc = _cli("run", "--config", str(bad), check=False)
    assert proc.returncode == 2
    assert "max_buffered" in proc.stderr


def test_run_refuses_a_recovery_store_with_state_of_retired_steps(live_config_path: Path,
                                                                  tmp_path: Path) -> None:
    """State of steps this version no longer has would be dropped silently on resume."""
    import sqlite3

    raw = yaml.safe_load(live_config_path.read_text())
    raw["recovery"] = {"dir": str(tmp_path / "recovery")}
    config = tmp_path / "atpflow.yaml"
    config.write_text(yaml.safe_dump(raw))
    _cli("recovery", "init", "--config", str(config), "--flow", "availability")
    part = tmp_path / "recovery" / "availability" / "part-0.sqlite3"
    con = sqlite3.connect(part)
    with con:
        con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                    "VALUES ('availability.sequence.sequence', '7', 1, NULL)")
    con.close()
    proc = _cli("run", "--config", str(config), "--flow", "availability", check=False, timeout=30)
    assert proc.returncode == 2
    assert "availability.sequence.sequence" in proc.stderr
    assert "from scratch" in proc.stderr
