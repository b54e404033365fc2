"""Dedup and sequencing of one source stream (one key: source|code|code).

Three small pieces, each testable alone:

- `IdMemory`: payload digests of the stream's recent sequence numbers. Because
  sequence numbers are contiguous, "at or below what the stream has applied"
  already identifies almost every redelivery, so only a window of 64 numbers
  (plus the reorder buffer) needs a digest: memory is bounded per stream, not
  per id ever seen.
- `SkipSet`: the numbers a stream skipped (ranges), so a late one can apply.
- `Sequencer`: the reorder buffer with gap timeout, `max_buffered` and skip,
  composed of the two above, with the contract's order of checks: identity,
  `INVALID_RECORD`, `CONFLICTING_DUPLICATE`, `INVALID_EVENT_TIME`.

Times are processing-time epoch seconds passed in by the caller (the engine
wrapper reads the clock), so the logic is deterministic under test.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from operators.decode import Decoded
from operators.records import DeadLetter, Reason, dead_letter

__all__ = ["MIN_EVENT_TIME_MS", "IdMemory", "Outcome", "SequencerState", "Sequencer", "SkipSet"]

#: 2000-01-01T00:00:00Z: anything earlier is INVALID_EVENT_TIME.
MIN_EVENT_TIME_MS = 946_684_800_000
#: How many applied sequence numbers keep their payload digest.
MEMORY_WINDOW = 64
ID_BYTES = 5
SLOT_BYTES = 10
DIGEST_BYTES = SLOT_BYTES - ID_BYTES
EMPTY_SLOT = bytes(SLOT_BYTES)
#: Skipped ranges remembered per stream; an older skipped number arriving counts as a duplicate.
MAX_SKIPPED_RANGES = 256


def id_hash(rid: str) -> bytes:
    """A 5-byte hash of a record id: a false match within one window is ~6e-11."""
    return hashlib.blake2b(rid.encode(), digest_size=ID_BYTES).digest()


@dataclass(slots=True)
class IdMemory:
    """Who held each of a stream's last `MEMORY_WINDOW` applied numbers, compactly.

    One 10-byte slot per number (`seq % MEMORY_WINDOW`): a 5-byte hash of the id and
    5 bytes of the payload digest, in one bytearray, so a stream costs 640 bytes here
    however many ids it has seen. Numbers still in the reorder buffer are checked in
    the buffer itself; the slot is written when the number is consumed. Dead-lettered
    records that hold no number (a conflicting duplicate, a record with no valid number)
    go to `extra`, pruned as the stream advances.
    """

    #: grows to `MEMORY_WINDOW` slots as numbers are written: a young stream costs little
    ring: bytearray = field(default_factory=bytearray)
    #: (id hash + digest) -> the number below which it is forgotten
    extra: dict[bytes, int] | None = None

    def slot(self, seq: int) -> bytes:
        at = (seq % MEMORY_WINDOW) * SLOT_BYTES
        return bytes(self.ring[at:at + SLOT_BYTES]) if at < len(self.ring) else EMPTY_SLOT

    def write(self, seq: int, entry: bytes) -> None:
        at = (seq % MEMORY_WINDOW) * SLOT_BYTES
        ring = self.ring
        if at >= len(ring):
            if entry == EMPTY_SLOT:
                return
            ring.extend(bytes(at - len(ring)))
            ring += entry
        else:
            ring[at:at + SLOT_BYTES] = entry

    def clear(self, seq: int) -> None:
        self.write(seq, EMPTY_SLOT)

    def has_id(self, idh: bytes) -> bool:
        """Is `idh` the id hash of any remembered slot or extra entry?"""
        ring = self.ring
        at = ring.find(idh)
        while at != -1:
            if at % SLOT_BYTES == 0:
                return True
            at = ring.find(idh, at + 1)
        return bool(self.extra) and any(k[:ID_BYTES] == idh for k in self.extra)  # type: ignore[union-attr]

    def remember_extra(self, entry: bytes, until: int) -> None:
        if self.extra is None:
            self.extra = {}
        self.extra[entry] = until

    def prune_extra(self, floor: int) -> None:
        if self.extra:
            for entry in [e for e, until in self.extra.items() if until < floor]:
                del self.extra[entry]
            if not self.extra:
                self.extra = None


@dataclass(slots=True)
class SkipSet:
    """Sorted, disjoint, inclusive ranges of skipped numbers."""

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, lo: int, hi: int) -> None:
        bisect.insort(self.ranges, (lo, hi))
        if len(self.ranges) > MAX_SKIPPED_RANGES:
            del self.ranges[0]

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.ranges, (seq, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= seq <= self.ranges[i][1]

    def remove(self, seq: int) -> None:
        i = bisect.bisect_right(self.ranges, (seq, float("inf"))) - 1
        lo, hi = self.ranges.pop(i)
        if lo < seq:
            self.ranges.insert(i, (lo, seq - 1))
            i += 1
        if seq < hi:
            self.ranges.insert(i, (seq + 1, hi))


@dataclass(slots=True)
class SequencerState:
    """Everything a stream keeps between records (snapshotted per key)."""

    #: source|code|code; set by the first record (the engine builds state without the key)
    stream: str = ""
    #: the input topic, for SEQUENCE_GAP dead letters
    topic: str = ""
    next_seq: int = 1
    #: seq -> record waiting for its turn, or the 10-byte identity of a dead-lettered
    #: record that used the number up. None while empty, like `skipped`: most streams
    #: never need either, and a million empty containers would cost ~170 MB.
    buffer: dict[int, Decoded | bytes] | None = None
    skipped: SkipSet | None = None
    memory: IdMemory = field(default_factory=IdMemory)
    #: Processing time at which the open gap skips.
    gap_deadline: float | None = None


@dataclass(slots=True)
class Outcome:
    """What one call produced: records in order, dead letters, and counts."""

    ordered: list[Decoded] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    gaps: int = 0


class Sequencer:
    """Dedup + reorder for one stream. See the module docstring for the rules."""

    def __init__(
        self,
        state: SequencerState,
        *,
        gap_timeout: float,
        max_buffered: int,
        max_clock_skew: float,
        stream_key: Callable[[Any], str],
    ) -> None:
        self.state = state
        self.gap_timeout = gap_timeout
        self.max_buffered = max_buffered
        self.max_clock_skew = max_clock_skew
        self.stream_key = stream_key
        #: take the fused path for in-order records (tests turn it off to compare the two)
        self.fused = True

    # -- arrival ---------------------------------------------------------------------------
    def on_record(self, d: Decoded, now: float, out: Outcome) -> None:
        """Route one arriving record: duplicate, dead letter, buffer or apply."""
        st = self.state
        rec = d.rec
        if not st.stream:
            # The shard's key string and one interned topic: a million streams share them.
            st.stream, st.topic = d.stream or self.stream_key(rec), sys.intern(d.raw.topic)
        rid, seq = rec.record_id, rec.seq
        if d.raw.replayed:
            # Its number was used up when it was dead-lettered: no sequence check; the
            # availability step applies it at most once, under the late-record rules.
            if not self._reject(d, now, out, conflict=False):
                out.ordered.append(d)
            return
        entry = d.identity = id_hash(rid) + d.digest[:DIGEST_BYTES]
        memory = st.memory
        if (self.fused and seq == st.next_seq and st.buffer is None and not memory.extra
                and not d.invalid and not memory.has_id(entry[:ID_BYTES])):
            # The common case, fused: the stream's next number, nothing waiting, a new id. The
            # general path below decides the same (tests/test_sequencing.py drives both).
            t = rec.event_time
            if MIN_EVENT_TIME_MS <= t <= now * 1000 + self.max_clock_skew * 1000:
                memory.write(seq, entry)
                out.ordered.append(d)
                st.next_seq = seq + 1
                st.gap_deadline = None
                return
        held = self._held(seq)  # the identity that holds `seq`, if remembered
        if held == entry or (st.memory.extra and entry in st.memory.extra):
            out.duplicates += 1
            return
        conflict = (held is not None) or self._knows_id(entry[:ID_BYTES])
        fresh_number = seq >= 1 and held is None and (
            seq >= st.next_seq or (st.skipped is not None and seq in st.skipped))
        if not conflict and not fresh_number and seq >= 1:
            out.duplicates += 1  # at or below what was applied, older than the memory window
            return
        if self._reject(d, now, out, conflict=conflict):
            # Dead-lettered: an exact redelivery is a duplicate, and a decoded record still
            # uses up a fresh number (the stream moves past it, no SEQUENCE_GAP for it).
            if fresh_number:
                self._take(seq, entry, now, out)
            else:
                st.memory.remember_extra(entry, max(seq, st.next_seq) + MEMORY_WINDOW)
            return
        self._take(seq, d, now, out)

    def _held(self, seq: int) -> bytes | None:
        st = self.state
        if seq >= st.next_seq:
            held = st.buffer.get(seq) if st.buffer else None
            if held is None or isinstance(held, bytes):
                return held
            return self._identity(held)
        if seq >= st.next_seq - MEMORY_WINDOW and seq >= 1:
            slot = st.memory.slot(seq)
            return None if slot == EMPTY_SLOT else slot
        return None

    def _knows_id(self, idh: bytes) -> bool:
        st = self.state
        if st.memory.has_id(idh):
            return True
        return any(
            (v if isinstance(v, bytes) else self._identity(v))[:ID_BYTES] == idh
            for v in st.buffer.values()
        ) if st.buffer else False

    def _reject(self, d: Decoded, now: float, out: Outcome, *, conflict: bool) -> bool:
        """The arrival checks, in the contract's order; True if dead-lettered."""
        rec = d.rec
        if d.invalid:
            out.dead.append(dead_letter(d.raw, Reason.INVALID_RECORD, d.invalid, rec.record_id))
            return True
        if conflict:
            detail = f"id {rec.record_id!r} / seq {rec.seq} already seen with a different payload"
            out.dead.append(dead_letter(d.raw, Reason.CONFLICTING_DUPLICATE, detail, rec.record_id))
            return True
        t = rec.event_time
        if t < MIN_EVENT_TIME_MS or t > now * 1000 + self.max_clock_skew * 1000:
            detail = f"event_time {t} is before 2000-01-01 or beyond the clock plus max_clock_skew"
            out.dead.append(dead_letter(d.raw, Reason.INVALID_EVENT_TIME, detail, rec.record_id))
            return True
        return False

    def _take(self, seq: int, d: Decoded | bytes, now: float, out: Outcome) -> None:
        st = self.state
        if seq < st.next_seq:
            st.skipped.remove(seq)  # type: ignore[union-attr]  # fresh and below next_seq: skipped
            if seq >= st.next_seq - MEMORY_WINDOW:
                st.memory.write(seq, d if isinstance(d, bytes) else self._identity(d))
            if not isinstance(d, bytes):
                out.ordered.append(d)  # a late correction
            return
        advanced = seq == st.next_seq
        if advanced:
            # In order (the common case): applied at once, then whatever it unblocked.
            self._consume(seq, d, out)
            st.next_seq += 1
        else:
            if st.buffer is None:
                st.buffer = {}
            st.buffer[seq] = d
        self._drain(out)
        if not st.buffer:
            st.gap_deadline = None
        elif advanced or st.gap_deadline is None:
            st.gap_deadline = now + self.gap_timeout
        if st.buffer and len(st.buffer) > self.max_buffered:
            self.skip(out)

    @staticmethod
    def _identity(d: Decoded) -> bytes:
        return d.identity or id_hash(d.rec.record_id) + d.digest[:DIGEST_BYTES]

    def _consume(self, seq: int, d: Decoded | bytes, out: Outcome) -> None:
        if isinstance(d, bytes):
            self.state.memory.write(seq, d)
        else:
            self.state.memory.write(seq, self._identity(d))
            out.ordered.append(d)

    def _drain(self, out: Outcome) -> None:
        """Apply what waits from `next_seq` on; forget extra ids the stream has moved past."""
        st = self.state
        buf = st.buffer
        while buf and st.next_seq in buf:
            self._consume(st.next_seq, buf.pop(st.next_seq), out)
            st.next_seq += 1
        if not buf:
            st.buffer = None
        st.memory.prune_extra(st.next_seq)

    # -- time ------------------------------------------------------------------------------
    def skip(self, out: Outcome) -> None:
        """Give up on every open gap: record the missing numbers, apply what waits."""
        st = self.state
        while st.buffer:
            lo, hi = st.next_seq, min(st.buffer) - 1
            if st.skipped is None:
                st.skipped = SkipSet()
            st.skipped.add(lo, hi)
            for seq in range(max(lo, hi - MEMORY_WINDOW + 1), hi + 1):
                st.memory.clear(seq)  # a slot may still hold the number 64 below
            out.gaps += 1
            out.dead.append(self._gap_letter(lo, hi))
            st.next_seq = hi + 1
            self._drain(out)
        st.gap_deadline = None

    def on_time(self, now: float, out: Outcome) -> None:
        """Skip if the open gap's deadline has passed (the engine may wake us early)."""
        if self.state.gap_deadline is not None and now >= self.state.gap_deadline:
            self.skip(out)

    def _gap_letter(self, lo: int, hi: int) -> DeadLetter:
        stream = self.state.stream
        key = stream.split("|", 1)[1] if "|" in stream else stream
        span = f"{lo}" if lo == hi else f"{lo}..{hi}"
        detail = f"stream {stream} skipped sequence numbers {span} after waiting for them"
        return DeadLetter(
            Reason.SEQUENCE_GAP, detail, self.state.topic, None, None, key, None, None,
            {"stream": stream, "missing_from": lo, "missing_to": hi},
        )

    @property
    def buffered(self) -> int:
        return len(self.state.buffer) if self.state.buffer else 0

    def snapshot(self) -> Any:
        return self.state
