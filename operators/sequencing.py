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
#: Skipped ranges remembered per stream; an older skipped number arriving counts as a duplicate.
MAX_SKIPPED_RANGES = 256


@dataclass(slots=True)
class IdMemory:
    """Recent payloads of one stream, pruned below a moving floor.

    `payloads` holds every (id, digest) seen in the window (the first record of a
    number and any dead-lettered ones), so an exact redelivery of anything is
    recognised; `holders` names the first id of each number and `ids` the newest number
    an id arrived with, for the conflicting-duplicate checks.
    """

    payloads: dict[tuple[str, bytes], int] = field(default_factory=dict)
    holders: dict[int, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def seen(self, rid: str, dig: bytes) -> bool:
        return (rid, dig) in self.payloads

    def knows_id(self, rid: str) -> bool:
        return rid in self.ids

    def holder_of(self, seq: int) -> str | None:
        return self.holders.get(seq)

    def remember(self, seq: int, rid: str, dig: bytes, *, holds: bool = True) -> None:
        """Remember a payload; `holds`: it is the record that owns number `seq`."""
        self.payloads[(rid, dig)] = seq
        self.ids[rid] = max(seq, self.ids.get(rid, seq))
        if holds:
            self.holders.setdefault(seq, rid)

    def prune_below(self, floor: int) -> None:
        """Forget numbers below `floor` (called as the stream advances)."""
        if not self.holders or min(self.payloads.values(), default=floor) >= floor:
            return
        for pair in [p for p, seq in self.payloads.items() if seq < floor]:
            del self.payloads[pair]
        for seq in [s for s in self.holders if s < floor]:
            del self.holders[seq]
        for rid in [r for r, seq in self.ids.items() if seq < floor]:
            del self.ids[rid]

    def __len__(self) -> int:
        return len(self.payloads)


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
    #: seq -> record waiting for its turn, or None for a number used up by a dead letter.
    buffer: dict[int, Decoded | None] = field(default_factory=dict)
    skipped: SkipSet = field(default_factory=SkipSet)
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

    # -- arrival ---------------------------------------------------------------------------
    def on_record(self, d: Decoded, now: float, out: Outcome) -> None:
        """Route one arriving record: duplicate, dead letter, buffer or apply."""
        st = self.state
        rec = d.rec
        if not st.stream:
            st.stream, st.topic = self.stream_key(rec), d.raw.topic
        rid, seq = rec.record_id, rec.seq
        if d.raw.replayed:
            # Its number was used up when it was dead-lettered: no sequence check; the
            # availability step applies it at most once, under the late-record rules.
            if not self._reject(d, now, out, conflict=False):
                out.ordered.append(d)
            return
        memory = st.memory
        if memory.seen(rid, d.digest):
            out.duplicates += 1
            return
        holder = memory.holder_of(seq)
        conflict = memory.knows_id(rid) or (holder is not None and holder != rid)
        fresh_number = seq >= 1 and holder is None and (seq >= st.next_seq or seq in st.skipped)
        if not conflict and not fresh_number and seq >= 1:
            out.duplicates += 1  # at or below what was applied, older than the memory window
            return
        if self._reject(d, now, out, conflict=conflict):
            # Dead-lettered: an exact redelivery is a duplicate, and a decoded record still
            # uses up a fresh number (the stream moves past it, no SEQUENCE_GAP for it).
            memory.remember(seq if seq >= 1 else st.next_seq, rid, d.digest, holds=fresh_number)
            if fresh_number:
                self._take(seq, None, now, out)
            return
        memory.remember(seq, rid, d.digest)
        self._take(seq, d, now, out)

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

    def _take(self, seq: int, d: Decoded | None, now: float, out: Outcome) -> None:
        st = self.state
        if seq < st.next_seq:
            st.skipped.remove(seq)
            if d is not None:
                out.ordered.append(d)  # a late correction
            return
        st.buffer[seq] = d
        advanced = self._drain(out)
        if not st.buffer:
            st.gap_deadline = None
        elif advanced or st.gap_deadline is None:
            st.gap_deadline = now + self.gap_timeout
        if len(st.buffer) > self.max_buffered:
            self.skip(out)

    def _drain(self, out: Outcome) -> bool:
        st = self.state
        start = st.next_seq
        buf = st.buffer
        while st.next_seq in buf:
            d = buf.pop(st.next_seq)
            if d is not None:
                out.ordered.append(d)
            st.next_seq += 1
        if st.next_seq != start:
            st.memory.prune_below(st.next_seq - MEMORY_WINDOW)
            return True
        return False

    # -- time ------------------------------------------------------------------------------
    def skip(self, out: Outcome) -> None:
        """Give up on every open gap: record the missing numbers, apply what waits."""
        st = self.state
        while st.buffer:
            lo, hi = st.next_seq, min(st.buffer) - 1
            st.skipped.add(lo, hi)
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
        return len(self.state.buffer)

    def snapshot(self) -> Any:
        return self.state
