"""Bytewax outputs for the marketplace sinks and the Redis view.

The two-phase contract maps onto a stateful sink partition.

``write_batch`` adds each record (cheap, in memory); ``snapshot`` runs at the end of every epoch
that brought the partition items, the dataflow's checkpoint, so it flushes the backlog there
(bounded by ``flush_budget_s``) and
returns the records not yet confirmed by the API as the partition's resume state. After a
restart they are pushed again (absolute quantities and idempotency keys make that harmless)
before the re-emitted records, which the sink then ignores or supersedes by version.

Use with ``bytewax.operators.output``; items are ``(key, record)`` pairs, keyed by the topic key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from ..redis_view import RedisViewWriter
from .config import MarketplaceConfig
from .fulfillment import FulfillmentSink, fulfillment_from_milestone
from .models import FulfillmentRequest
from .sink import DeadLetterCallback, MarketplaceSink

__all__ = ["FulfillmentOutput", "MarketplaceOutput", "RedisViewOutput"]

_log = logging.getLogger("atpflow.marketplace")

#: On a clean end of input (SIGTERM), how long `close` keeps pushing what is left. Kept
#: under `atpflow run`'s stop grace; what is left stays in the last snapshot (with recovery)
#: or is superseded by the next record of its key and repaired by the read-back.
_CLOSE_DRAIN_S = 4.0


class _Checkpointed(StatefulSinkPartition[Mapping[str, Any], list[Any]]):
    """A partition that pushes at every checkpoint, and retries on its own in between.

    Bytewax snapshots a sink partition only at the end of an epoch in which it received
    items. A backlog left by an outage would otherwise wait for the next input, which may
    never come: a daemon thread retries it every `RETRY_S` while anything is pending. One
    lock keeps the sinks single-threaded.
    """

    RETRY_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._retry_loop, name="atpflow-sink-retry",
                                        daemon=True)
        self._thread.start()

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.RETRY_S):
            with self._lock:
                if self._stop.is_set() or not self._pending():
                    continue
                try:
                    self._flush()
                except Exception:  # the next checkpoint reports it; the loop must live on
                    _log.exception("background retry of a sink backlog failed")

    def write_batch(self, values: list[Mapping[str, Any]]) -> None:
        with self._lock:
            self._add_all(values)

    def snapshot(self) -> list[Any]:
        with self._lock:
            self._flush()
            return self._state()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._close()

    def _add_all(self, values: Iterable[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _state(self) -> list[Any]:
        raise NotImplementedError

    def _pending(self) -> bool:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class _AvailabilityPartition(_Checkpointed):
    def __init__(
        self, sinks: dict[str, MarketplaceSink], resume: Iterable[Mapping[str, Any]]
    ) -> None:
        self._sinks = sinks
        self._add_all(resume)
        super().__init__()

    def _add_all(self, values: Iterable[Mapping[str, Any]]) -> None:
        for record in values:
            sink = self._sinks.get(str(record.get("channel")))
            if sink is not None:  # channels of kind "topic" have no sink
                sink.add(record)

    def _flush(self) -> None:
        for sink in self._sinks.values():
            sink.flush()

    def _state(self) -> list[Any]:
        return [record for sink in self._sinks.values() for record in sink.snapshot()]

    def _pending(self) -> bool:
        return any(sink.backlog_size for sink in self._sinks.values())

    def _close(self) -> None:
        for channel, sink in self._sinks.items():
            if not sink.drain(_CLOSE_DRAIN_S):
                _log.warning("%s: %d keys still unpushed at close", channel, sink.backlog_size)
            sink.close()


class _FulfillmentPartition(_Checkpointed):
    def __init__(
        self, sinks: dict[str, FulfillmentSink], resume: Iterable[Mapping[str, Any]]
    ) -> None:
        self._sinks = sinks
        self._add_all(resume)
        super().__init__()

    def _add_all(self, values: Iterable[Mapping[str, Any]]) -> None:
        for item in values:
            sink = self._sinks.get(str(item.get("channel")))
            if sink is None:
                continue
            try:
                request = (
                    fulfillment_from_milestone(item)
                    if "milestone" in item
                    else FulfillmentRequest.from_mapping(item)
                )
            except ValueError as exc:  # a SHIPPED milestone without tracking cannot be pushed
                _log.warning("fulfillment not pushable: %s", exc)
                continue
            if request is not None:
                sink.add(request)

    def _flush(self) -> None:
        for sink in self._sinks.values():
            sink.flush()

    def _state(self) -> list[Any]:
        return [req for sink in self._sinks.values() for req in sink.pending_requests()]

    def _pending(self) -> bool:
        return any(sink.pending_requests() for sink in self._sinks.values())

    def _close(self) -> None:
        for sink in self._sinks.values():
            sink.drain(_CLOSE_DRAIN_S)
            sink.close()


class _ChannelOutput(FixedPartitionedSink[Mapping[str, Any], list[Any]]):
    """One sink per configured channel in each partition; items routed by record key."""

    _name: str
    _sink_type: Any
    _partition_type: Any

    def __init__(
        self,
        config: MarketplaceConfig,
        *,
        partitions: int = 1,
        dead_letter: DeadLetterCallback | None = None,
    ) -> None:
        self._config = config
        self._partitions = partitions
        self._dead_letter = dead_letter

    def list_parts(self) -> list[str]:
        return [f"{self._name}-{n}" for n in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: list[Any] | None) -> Any:
        sinks = {
            channel: self._sink_type.from_config(self._config, channel, dead_letter=self._dead_letter)
            for channel in self._config.channels
        }
        return self._partition_type(sinks, resume_state or ())


class MarketplaceOutput(_ChannelOutput):
    """Pushes ``availability.<channel>`` records of every configured channel to its marketplace."""

    _name = "marketplace"
    _sink_type = MarketplaceSink
    _partition_type = _AvailabilityPartition


class FulfillmentOutput(_ChannelOutput):
    """Pushes each shipment's SHIPPED milestone (``shipment.milestones``) as a fulfillment."""

    _name = "fulfillment"
    _sink_type = FulfillmentSink
    _partition_type = _FulfillmentPartition


class _ViewPartition(_Checkpointed):
    def __init__(self, writer: RedisViewWriter, resume: Iterable[Mapping[str, Any]]) -> None:
        self._writer = writer
        writer.add_many(resume)
        super().__init__()

    def _add_all(self, values: Iterable[Mapping[str, Any]]) -> None:
        self._writer.add_many(values)

    def _flush(self) -> None:
        self._writer.flush()

    def _state(self) -> list[Any]:
        # What Redis did not take is the resume state.
        return self._writer.pending_records()

    def _pending(self) -> bool:
        return self._writer.pending_count > 0

    def _close(self) -> None:
        self._writer.flush()


class RedisViewOutput(FixedPartitionedSink[Mapping[str, Any], list[Mapping[str, Any]]]):
    """Bytewax output writing ``availability.<channel>`` records to the Redis view.

    Items are ``(key, record)``; every epoch end flushes (see `RedisViewWriter`).
    """

    def __init__(self, url: str, *, prefix: str = "atpflow", partitions: int = 1) -> None:
        self._url = url
        self._prefix = prefix
        self._partitions = partitions

    def list_parts(self) -> list[str]:
        return [f"redis-view-{n}" for n in range(self._partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[Mapping[str, Any]] | None
    ) -> _ViewPartition:
        return _ViewPartition(
            RedisViewWriter.from_url(self._url, prefix=self._prefix), resume_state or ()
        )
