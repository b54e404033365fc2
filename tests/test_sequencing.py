"""Sequencer, IdMemory, SkipSet: dedup, reorder, gaps and skips of one source stream."""

from __future__ import annotations

import pytest
from helpers import NOW, WMS_TOPIC, erp_decoded, new_sequencer, wms_decoded

from operators.decode import Decoded
from operators.records import DeadLetter, Reason
from operators.sequencing import (
    ID_BYTES,
    MAX_SKIPPED_RANGES,
    MEMORY_WINDOW,
    MIN_EVENT_TIME_MS,
    SLOT_BYTES,
    IdMemory,
    Outcome,
    Sequencer,
    SkipSet,
    id_hash,
)

STREAM = "wms|DC-ATL|ITM-1"


def txn(seq: int, **changes: object) -> Decoded:
    """WMS transaction number `seq` with id T<seq> (unless changed)."""
    changes.setdefault("txn_id", f"T{seq}")
    return wms_decoded(seq=seq, offset=seq, **changes)


def feed(s: Sequencer, *records: Decoded, now: float = NOW) -> Outcome:
    out = Outcome()
    for d in records:
        s.on_record(d, now, out)
    return out


def tick(s: Sequencer, now: float) -> Outcome:
    out = Outcome()
    s.on_time(now, out)
    return out


def ids(out: Outcome) -> list[str]:
    return [d.rec.record_id for d in out.ordered]


def reasons(out: Outcome) -> list[tuple[str, str | None]]:
    return [(dl.reason, dl.source_id) for dl in out.dead]


def gap_ranges(out: Outcome) -> list[tuple[int, int]]:
    assert all(dl.reason == Reason.SEQUENCE_GAP for dl in out.dead)
    return [(dl.gap["missing_from"], dl.gap["missing_to"]) for dl in out.dead]


# -- in order and reordered -------------------------------------------------------------------


def test_in_order_records_apply_at_once() -> None:
    s = new_sequencer()

    out = feed(s, txn(1), txn(2), txn(3))

    assert ids(out) == ["T1", "T2", "T3"]
    assert (out.dead, out.duplicates, out.gaps) == ([], 0, 0)
    assert s.state.next_seq == 4
    assert not s.state.buffer
    assert s.state.gap_deadline is None
    assert (s.state.stream, s.state.topic) == (STREAM, WMS_TOPIC)


@pytest.mark.parametrize(
    ("arrival", "emitted_after_each"),
    [
        ([3, 2, 1], [[], [], ["T1", "T2", "T3"]]),
        ([2, 1, 3], [[], ["T1", "T2"], ["T3"]]),
        ([1, 3, 2], [["T1"], [], ["T2", "T3"]]),
        ([4, 2, 3, 1], [[], [], [], ["T1", "T2", "T3", "T4"]]),
    ],
)
def test_early_arrival_waits_then_drains_in_order(
    arrival: list[int], emitted_after_each: list[list[str]]
) -> None:
    s = new_sequencer()

    got = [ids(feed(s, txn(n))) for n in arrival]

    assert got == emitted_after_each
    assert s.state.next_seq == len(arrival) + 1
    assert not s.state.buffer
    assert s.state.gap_deadline is None


def test_open_gap_sets_deadline_at_first_early_arrival() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1))

    feed(s, txn(3), now=NOW)
    feed(s, txn(4), now=NOW + 10)  # still the same gap: the deadline stays

    assert s.state.gap_deadline == NOW + 30
    assert s.buffered == 2


def test_erp_stream_orders_by_change_seq() -> None:
    s = new_sequencer()

    first = feed(s, erp_decoded(doc_id="D2", change_seq=2))
    second = feed(s, erp_decoded(doc_id="D1", change_seq=1))

    assert ids(first) == []
    assert ids(second) == ["D1", "D2"]
    assert s.state.stream == "erp|1000|0001"


# -- duplicates -------------------------------------------------------------------------------


def test_exact_duplicate_in_the_reorder_buffer_is_counted() -> None:
    s = new_sequencer()
    feed(s, txn(2))

    dup = feed(s, txn(2))
    rest = feed(s, txn(1))

    assert (ids(dup), dup.dead, dup.duplicates) == ([], [], 1)
    assert ids(rest) == ["T1", "T2"]


def test_exact_duplicate_of_the_record_just_applied_is_counted() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    dup = feed(s, txn(1))

    assert (ids(dup), dup.dead, dup.duplicates) == ([], [], 1)
    assert s.state.next_seq == 2


def test_redelivery_older_than_the_memory_window_is_a_plain_duplicate() -> None:
    s = new_sequencer()
    feed(s, *[txn(n) for n in range(1, 101)])
    assert not s.state.memory.has_id(id_hash("T1"))  # its slot now holds number 65

    exact = feed(s, txn(1))
    changed = feed(s, txn(1, qty=99))  # a different payload, but too old to tell
    other_id = feed(s, txn(2, txn_id="X2"))  # at or below what applied, not skipped

    for out in (exact, changed, other_id):
        assert (ids(out), out.dead, out.duplicates) == ([], [], 1)


def test_the_last_64_numbers_keep_their_payload_digest() -> None:
    s = new_sequencer()
    feed(s, *[txn(n) for n in range(1, 101)])
    oldest_kept = 100 - MEMORY_WINDOW + 1

    conflict = feed(s, txn(oldest_kept, qty=99))

    assert MEMORY_WINDOW == 64
    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, f"T{oldest_kept}")]
    assert conflict.duplicates == 0


# -- conflicting duplicates -------------------------------------------------------------------


def test_same_id_different_payload_in_buffer_is_conflicting_and_first_wins() -> None:
    s = new_sequencer()
    feed(s, txn(2, qty=1))

    conflict = feed(s, txn(2, qty=5))
    rest = feed(s, txn(1))

    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, "T2")]
    assert conflict.dead[0].detail == "id 'T2' / seq 2 already seen with a different payload"
    assert conflict.dead[0].offset == 2 and conflict.dead[0].value is not None
    assert ids(rest) == ["T1", "T2"]
    assert rest.ordered[1].rec.qty == 1


def test_same_id_different_payload_after_apply_is_conflicting() -> None:
    s = new_sequencer()
    feed(s, txn(1, qty=1))

    conflict = feed(s, txn(1, qty=2))

    assert ids(conflict) == []
    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, "T1")]
    assert conflict.duplicates == 0


@pytest.mark.parametrize("first_applied", [True, False], ids=["applied", "buffered"])
def test_same_seq_different_id_is_conflicting(first_applied: bool) -> None:
    s = new_sequencer()
    if first_applied:
        feed(s, txn(1))
        number = 1
    else:
        feed(s, txn(2))
        number = 2

    conflict = feed(s, txn(number, txn_id="X"))

    assert ids(conflict) == []
    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, "X")]
    assert conflict.dead[0].detail == f"id 'X' / seq {number} already seen with a different payload"


def test_same_id_different_seq_is_conflicting() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    conflict = feed(s, txn(3, txn_id="T1"))

    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, "T1")]
    assert ids(conflict) == []


def test_conflicting_duplicate_with_a_fresh_number_uses_up_its_number() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1))
    conflict = feed(s, txn(2, txn_id="T1"))  # id T1 again, different payload, number 2
    assert reasons(conflict) == [(Reason.CONFLICTING_DUPLICATE, "T1")]

    after = feed(s, txn(3))
    later = tick(s, NOW + 60)

    assert ids(after) == ["T3"]
    assert later.dead == []


def test_exact_redelivery_of_a_conflicting_duplicate_is_counted() -> None:
    s = new_sequencer()
    feed(s, txn(1, qty=1))
    first = feed(s, txn(1, qty=2))
    assert reasons(first) == [(Reason.CONFLICTING_DUPLICATE, "T1")]

    again = feed(s, txn(1, qty=2))

    assert (again.dead, again.duplicates) == ([], 1)


# -- dead letters on arrival, in the contract's order -----------------------------------------


def test_invalid_record_takes_precedence_over_conflicting_duplicate() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    same_id = feed(s, txn(1, uom=""))
    same_seq = feed(s, txn(1, txn_id="X", uom=""))

    assert reasons(same_id) == [(Reason.INVALID_RECORD, "T1")]
    assert same_id.dead[0].detail == "uom: String should have at least 1 character"
    assert reasons(same_seq) == [(Reason.INVALID_RECORD, "X")]


def test_conflicting_duplicate_takes_precedence_over_invalid_event_time() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    out = feed(s, txn(1, event_time=0))

    assert reasons(out) == [(Reason.CONFLICTING_DUPLICATE, "T1")]


@pytest.mark.parametrize(
    ("event_time", "valid"),
    [
        pytest.param(0, False, id="epoch"),
        pytest.param(MIN_EVENT_TIME_MS - 1, False, id="just-before-2000"),
        pytest.param(MIN_EVENT_TIME_MS, True, id="2000-01-01"),
        pytest.param(int(NOW * 1000) + 3_600_000, True, id="now-plus-skew"),
        pytest.param(int(NOW * 1000) + 3_600_001, False, id="beyond-now-plus-skew"),
        pytest.param(int(NOW * 1000) + 86_400_000 * 365, False, id="a-year-ahead"),
    ],
)
def test_event_time_bounds(event_time: int, valid: bool) -> None:
    s = new_sequencer(max_clock_skew=3600)

    out = feed(s, txn(1, event_time=event_time), now=NOW)

    if valid:
        assert (ids(out), out.dead) == (["T1"], [])
    else:
        assert ids(out) == []
        assert reasons(out) == [(Reason.INVALID_EVENT_TIME, "T1")]
        assert out.dead[0].detail == (
            f"event_time {event_time} is before 2000-01-01 or beyond the clock plus max_clock_skew"
        )
    assert s.state.next_seq == 2  # used up either way


def test_max_clock_skew_is_the_configured_one() -> None:
    s = new_sequencer(max_clock_skew=60)

    out = feed(s, txn(1, event_time=int(NOW * 1000) + 60_001), now=NOW)

    assert reasons(out) == [(Reason.INVALID_EVENT_TIME, "T1")]


BAD_RECORDS = [
    pytest.param({"uom": ""}, Reason.INVALID_RECORD, id="invalid-record"),
    pytest.param({"event_time": 5}, Reason.INVALID_EVENT_TIME, id="before-2000"),
    pytest.param({"event_time": int(NOW * 1000) + 7_200_000}, Reason.INVALID_EVENT_TIME,
                 id="far-future"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_RECORDS)
def test_dead_lettered_record_uses_up_its_number(bad: dict[str, object], reason: str) -> None:
    s = new_sequencer()
    feed(s, txn(1))

    dead = feed(s, txn(2, **bad))
    after = feed(s, txn(3))
    later = tick(s, NOW + 3600)

    assert reasons(dead) == [(reason, "T2")]
    assert ids(dead) == []
    assert (ids(after), after.dead) == (["T3"], [])
    assert (later.dead, later.gaps) == ([], 0)
    assert s.state.next_seq == 4


@pytest.mark.parametrize(("bad", "reason"), BAD_RECORDS)
def test_dead_lettered_early_record_fills_its_place_in_the_buffer(
    bad: dict[str, object], reason: str
) -> None:
    s = new_sequencer()
    feed(s, txn(1))

    dead = feed(s, txn(3, **bad))
    fill = feed(s, txn(2))

    assert reasons(dead) == [(reason, "T3")]
    assert (ids(fill), fill.dead) == (["T2"], [])
    assert s.state.next_seq == 4
    assert not s.state.buffer
    assert s.state.gap_deadline is None


@pytest.mark.parametrize(("bad", "reason"), BAD_RECORDS)
def test_exact_redelivery_of_a_dead_lettered_record_is_a_duplicate(
    bad: dict[str, object], reason: str
) -> None:
    s = new_sequencer()
    feed(s, txn(1))
    first = feed(s, txn(2, **bad))

    again = feed(s, txn(2, **bad))

    assert reasons(first) == [(reason, "T2")]
    assert (again.dead, again.duplicates, ids(again)) == ([], 1, [])


def test_exact_redelivery_of_an_invalid_seq_zero_record_is_a_duplicate() -> None:
    s = new_sequencer()
    first = feed(s, txn(0, txn_id="Z"))
    assert reasons(first) == [(Reason.INVALID_RECORD, "Z")]

    again = feed(s, txn(0, txn_id="Z"))

    assert (again.dead, again.duplicates) == ([], 1)


def test_invalid_seq_zero_record_is_dead_lettered_and_does_not_move_the_stream() -> None:
    s = new_sequencer()

    out = feed(s, txn(0, txn_id="Z"))
    after = feed(s, txn(1))

    assert reasons(out) == [(Reason.INVALID_RECORD, "Z")]
    assert out.dead[0].detail == "seq: Input should be greater than or equal to 1"
    assert ids(after) == ["T1"]


# -- gaps and skips ---------------------------------------------------------------------------


def test_gap_timeout_skips_and_on_time_before_the_deadline_does_nothing() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1))
    feed(s, txn(3), now=NOW)

    early = tick(s, NOW + 29.999)
    due = tick(s, NOW + 30)

    assert (early.ordered, early.dead, early.gaps) == ([], [], 0)
    assert s.state.next_seq == 4
    assert ids(due) == ["T3"]
    assert gap_ranges(due) == [(2, 2)]
    assert due.gaps == 1
    assert s.state.gap_deadline is None
    assert 2 in s.state.skipped


def test_on_time_without_an_open_gap_does_nothing() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    out = tick(s, NOW + 10_000)

    assert (out.ordered, out.dead, out.gaps) == ([], [], 0)


def test_sequence_gap_dead_letter_names_stream_and_missing_range() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(5), now=NOW)

    out = tick(s, NOW + 30)

    assert ids(out) == ["T5"]
    assert len(out.dead) == 1
    gap = out.dead[0]
    assert gap == DeadLetter(
        Reason.SEQUENCE_GAP,
        "stream wms|DC-ATL|ITM-1 skipped sequence numbers 1..4 after waiting for them",
        WMS_TOPIC, None, None, "DC-ATL|ITM-1", None, None,
        {"stream": STREAM, "missing_from": 1, "missing_to": 4},
    )
    assert s.state.next_seq == 6
    assert [n in s.state.skipped for n in range(0, 7)] == [False, True, True, True, True,
                                                          False, False]


def test_skip_records_every_missing_range_in_the_buffer() -> None:
    s = new_sequencer()
    feed(s, txn(1), txn(3), txn(6), txn(7))

    out = Outcome()
    s.skip(out)

    assert ids(out) == ["T3", "T6", "T7"]
    assert gap_ranges(out) == [(2, 2), (4, 5)]
    assert [dl.detail for dl in out.dead] == [
        "stream wms|DC-ATL|ITM-1 skipped sequence numbers 2 after waiting for them",
        "stream wms|DC-ATL|ITM-1 skipped sequence numbers 4..5 after waiting for them",
    ]
    assert out.gaps == 2
    assert s.state.next_seq == 8


def test_skip_with_nothing_buffered_does_nothing() -> None:
    s = new_sequencer()
    feed(s, txn(1))

    out = Outcome()
    s.skip(out)

    assert (out.ordered, out.dead, out.gaps) == ([], [], 0)
    assert s.state.next_seq == 2


@pytest.mark.parametrize("max_buffered", [1, 3, 10])
def test_buffer_over_max_buffered_skips(max_buffered: int) -> None:
    s = new_sequencer(max_buffered=max_buffered, gap_timeout=30)
    early = [txn(n) for n in range(2, max_buffered + 2)]

    held = feed(s, *early)
    over = feed(s, txn(max_buffered + 2))

    assert (held.ordered, held.dead) == ([], [])
    assert s.buffered == 0
    assert ids(over) == [f"T{n}" for n in range(2, max_buffered + 3)]
    assert gap_ranges(over) == [(1, 1)]
    assert s.state.next_seq == max_buffered + 3


def test_late_correction_of_a_skipped_number_applies_once() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1), txn(3), txn(4))
    tick(s, NOW + 30)

    late = feed(s, txn(2))
    again = feed(s, txn(2))

    assert (ids(late), late.dead, late.duplicates) == (["T2"], [], 0)
    assert 2 not in s.state.skipped
    assert (ids(again), again.dead, again.duplicates) == ([], [], 1)
    assert s.state.next_seq == 5


def test_late_dead_lettered_record_for_a_skipped_number_uses_it_up() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1), txn(3))
    tick(s, NOW + 30)

    late = feed(s, txn(2, uom=""))
    again_other = feed(s, txn(2, txn_id="Y"))

    assert reasons(late) == [(Reason.INVALID_RECORD, "T2")]
    assert 2 not in s.state.skipped
    assert reasons(again_other) == [(Reason.CONFLICTING_DUPLICATE, "Y")]


def test_stream_starting_at_five_skips_one_to_four_after_gap_timeout() -> None:
    s = new_sequencer(gap_timeout=30)

    first = feed(s, txn(5), now=NOW)
    before = tick(s, NOW + 29)
    after = tick(s, NOW + 30)
    late = feed(s, txn(3))

    assert (first.ordered, before.ordered, before.dead) == ([], [], [])
    assert ids(after) == ["T5"]
    assert gap_ranges(after) == [(1, 4)]
    assert ids(late) == ["T3"]
    assert [n in s.state.skipped for n in (1, 2, 3, 4)] == [True, True, False, True]


def test_gap_left_after_the_stream_advances_still_skips_after_a_timeout() -> None:
    s = new_sequencer(gap_timeout=30)
    feed(s, txn(1))
    feed(s, txn(3), txn(5), now=NOW)

    filled = feed(s, txn(2), now=NOW + 20)  # 2, 3 apply; 4 is the gap still open
    early = tick(s, NOW + 29)
    late = tick(s, NOW + 50)

    assert ids(filled) == ["T2", "T3"]
    assert s.state.next_seq == 6
    assert (early.ordered, early.dead) == ([], [])
    assert ids(late) == ["T5"]
    assert gap_ranges(late) == [(4, 4)]


# -- replayed dead letters --------------------------------------------------------------------


def test_replayed_record_bypasses_the_sequence_check() -> None:
    s = new_sequencer()
    feed(s, txn(1), txn(2), txn(3))

    below = feed(s, wms_decoded(txn_id="R2", seq=2, qty=7, replayed=True))
    ahead = feed(s, wms_decoded(txn_id="R9", seq=9, replayed=True))
    same_as_applied = feed(s, wms_decoded(txn_id="T1", seq=1, qty=50, replayed=True))

    assert (ids(below), below.dead, below.duplicates) == (["R2"], [], 0)
    assert (ids(ahead), ahead.dead) == (["R9"], [])
    assert (ids(same_as_applied), same_as_applied.dead) == (["T1"], [])
    assert s.state.next_seq == 4
    assert not s.state.buffer
    assert s.state.gap_deadline is None


def test_replayed_record_still_gets_the_arrival_checks() -> None:
    s = new_sequencer()

    invalid = feed(s, wms_decoded(txn_id="R1", uom="", replayed=True))
    bad_time = feed(s, wms_decoded(txn_id="R2", event_time=1, replayed=True))

    assert reasons(invalid) == [(Reason.INVALID_RECORD, "R1")]
    assert reasons(bad_time) == [(Reason.INVALID_EVENT_TIME, "R2")]
    assert (invalid.ordered, bad_time.ordered) == ([], [])


def test_replayed_record_is_not_deduplicated_by_the_sequencer() -> None:
    # At most once is the availability step's job (tests/test_availability.py).
    s = new_sequencer()
    replayed = wms_decoded(txn_id="R1", seq=1, replayed=True)

    out = feed(s, replayed, replayed)

    assert ids(out) == ["R1", "R1"]
    assert not any(s.state.memory.ring) and s.state.memory.extra is None


# -- bounded memory ---------------------------------------------------------------------------


def _cheap_txn(seq: int) -> Decoded:
    """A decoded record without the Avro round trip (for the big loops)."""
    proto = _PROTO
    rec = proto.rec.model_copy(update={"txn_id": f"T{seq}", "seq": seq})
    return Decoded(proto.raw, rec, seq.to_bytes(8, "big"))


_PROTO = wms_decoded()


def test_memory_stays_bounded_over_200k_in_order_records() -> None:
    s = new_sequencer()
    memory = s.state.memory
    biggest = 0
    applied = 0

    for n in range(1, 200_001):
        out = Outcome()
        s.on_record(_cheap_txn(n), NOW, out)
        applied += len(out.ordered)
        biggest = max(biggest, len(memory.ring) + len(memory.extra or ()))

    assert applied == 200_000
    assert biggest == MEMORY_WINDOW * SLOT_BYTES
    newest = range(200_001 - MEMORY_WINDOW, 200_001)
    assert [memory.slot(n)[:ID_BYTES] for n in newest] == [id_hash(f"T{n}") for n in newest]
    assert not s.state.buffer


def test_memory_stays_bounded_by_window_plus_buffer_when_reordered() -> None:
    s = new_sequencer()
    memory = s.state.memory
    applied = 0
    worst_excess = 0

    for base in range(1, 40_001, 4):  # arrives as 4, 3, 2, 1, 8, 7, 6, 5, ...
        for n in (base + 3, base + 2, base + 1, base):
            out = Outcome()
            s.on_record(_cheap_txn(n), NOW, out)
            applied += len(out.ordered)
            worst_excess = max(worst_excess, len(memory.ring) - MEMORY_WINDOW * SLOT_BYTES,
                               len(memory.extra or ()), len(s.state.buffer or ()) - 4)

    assert applied == 40_000
    assert worst_excess <= 0


def test_many_gaps_keep_the_skip_set_bounded() -> None:
    s = new_sequencer(gap_timeout=1)
    now = NOW
    s.on_record(_cheap_txn(1), now, Outcome())
    gaps = 0
    for n in range(3, 4001, 2):  # every even number goes missing
        s.on_record(_cheap_txn(n), now, Outcome())
        now += 1
        out = tick(s, now)
        gaps += out.gaps

    assert gaps == 1999
    assert len(s.state.skipped.ranges) == MAX_SKIPPED_RANGES
    assert s.state.memory.extra is None
    newest_skipped = 3998
    late = feed(s, _cheap_txn(newest_skipped))
    oldest = feed(s, _cheap_txn(2))
    assert ids(late) == [f"T{newest_skipped}"]
    assert (ids(oldest), oldest.dead, oldest.duplicates) == ([], [], 1)


# -- the small pieces alone -------------------------------------------------------------------


def test_id_memory_slots_ids_and_extra_entries() -> None:
    m = IdMemory()
    a = id_hash("A") + b"\x01" * 5
    b = id_hash("B") + b"\x02" * 5
    m.write(1, a)
    m.write(2, b)
    m.remember_extra(id_hash("D") + b"\x03" * 5, until=10)

    assert (m.slot(1), m.slot(2), m.slot(3)) == (a, b, bytes(SLOT_BYTES))
    assert m.has_id(id_hash("B")) and m.has_id(id_hash("D")) and not m.has_id(id_hash("Z"))

    m.write(1 + MEMORY_WINDOW, id_hash("C") + b"\x04" * 5)  # number 65 reuses the slot of 1
    m.prune_extra(11)

    assert not m.has_id(id_hash("A")) and not m.has_id(id_hash("D"))
    assert m.extra is None


def test_id_memory_matches_an_id_only_at_slot_boundaries() -> None:
    m = IdMemory()
    idh = id_hash("A")
    m.write(0, b"\x00" * 3 + idh + b"\x00" * 3)  # the bytes occur, but not as an id

    assert not m.has_id(idh)


def test_skip_set_membership_and_remove_splits_ranges() -> None:
    sk = SkipSet()
    sk.add(10, 12)
    sk.add(2, 5)

    assert sk.ranges == [(2, 5), (10, 12)]
    assert [n in sk for n in range(1, 14)] == [
        False, True, True, True, True, False, False, False, False, True, True, True, False]

    sk.remove(3)
    sk.remove(12)
    sk.remove(10)

    assert sk.ranges == [(2, 2), (4, 5), (11, 11)]


def test_skip_set_drops_its_oldest_range_when_full() -> None:
    sk = SkipSet()
    for i in range(MAX_SKIPPED_RANGES + 10):
        sk.add(10 * i, 10 * i + 1)

    assert len(sk.ranges) == MAX_SKIPPED_RANGES
    assert sk.ranges[0] == (100, 101)
    assert 0 not in sk
    assert 10 * (MAX_SKIPPED_RANGES + 9) in sk


def test_young_stream_keeps_a_small_ring_and_still_knows_its_ids() -> None:
    s = new_sequencer()
    out = feed(s, txn(1), txn(2), txn(3))
    assert ids(out) == ["T1", "T2", "T3"]
    # Three numbers hold three slots, not the whole window; no buffer or skip set was made.
    assert len(s.state.memory.ring) == 4 * SLOT_BYTES  # slots 0..3 (slot 0 unused)
    assert s.state.buffer is None and s.state.skipped is None
    again = feed(s, txn(2), txn(2, qty=99))
    assert again.duplicates == 1
    assert reasons(again) == [(Reason.CONFLICTING_DUPLICATE, "T2")]
    # The ring never outgrows the window, however long the stream runs.
    feed(s, *(txn(n) for n in range(4, 200)))
    assert len(s.state.memory.ring) == MEMORY_WINDOW * SLOT_BYTES


# -- the fused in-order path decides what the general path decides ------------------------------


def _arrival() -> object:
    from hypothesis import strategies as st

    return st.one_of(
        # mostly the next number (the fused path), sometimes early, late or repeated
        st.tuples(st.just("record"), st.sampled_from([1] * 12 + [0, 2, -1, -3]),
                  st.sampled_from(["same", "same", "same", "other-id", "other-qty", "bad-time",
                                   "empty-item"])),
        st.tuples(st.just("tick"), st.floats(0, 60), st.just("")),
    )


def test_fused_in_order_path_equals_the_general_path() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_arrival(), min_size=10, max_size=120), st.integers(2, 40))
    def check(arrivals: list[tuple[str, float, str]], max_buffered: int) -> None:
        fused = new_sequencer(max_buffered=max_buffered)
        plain = new_sequencer(max_buffered=max_buffered)
        plain.fused = False
        now, cursor = NOW, 0
        for what, n, variant in arrivals:
            if what == "tick":
                now += n
                a, b = tick(fused, now), tick(plain, now)
            else:
                cursor = max(0, cursor + int(n))
                seq = cursor
                changes: dict[str, object] = {
                    "same": {}, "other-id": {"txn_id": f"X{seq % 3}"}, "other-qty": {"qty": 99},
                    "bad-time": {"event_time": 1}, "empty-item": {"uom": ""},
                }[variant]
                a = feed(fused, txn(seq, **changes), now=now)
                b = feed(plain, txn(seq, **changes), now=now)
            assert (ids(a), reasons(a), a.duplicates, a.gaps) == (ids(b), reasons(b), b.duplicates, b.gaps)
            assert fused.state == plain.state

    check()
