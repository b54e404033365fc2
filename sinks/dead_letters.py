"""Dead letters that sinks raise outside the dataflow graph (marketplace pushes).

A marketplace update that exhausts its retry budget, or that the API rejects, is
written to the dead-letter topic with the API's answer. The write is synchronous
and raises if the broker does not take it: a dead letter is never dropped, and a
failed write stops the dataflow so that recovery replays the record.
"""

from __future__ import annotations

import json
from typing import Any

from dataflows.config import Config
from operators import metrics
from operators.records import DeadLetter
from schemas import codec

__all__ = ["MarketplaceDeadLetters", "marketplace_dead_letter"]


def marketplace_dead_letter(config: Config, letter: Any) -> DeadLetter:
    """A `MarketplaceDeadLetter` as a contract dead letter (reason `MARKETPLACE_<reason>`)."""
    record = letter.record
    topic = config.topics.availability(letter.channel) if letter.operation != "fulfillment" \
        else config.topics.milestones
    schema = "AvailabilityRecord" if topic != config.topics.milestones else "ShipmentMilestone"
    value = None
    if record is not None:
        try:
            value = codec(schema).encode(dict(record))
        except Exception:  # a partial record: keep the answer, the key and the version
            value = None
    answer = {"operation": letter.operation, "attempts": letter.attempts,
              "http_status": letter.http_status, "code": letter.code,
              "response": letter.response, "version": letter.version}
    return DeadLetter(
        f"MARKETPLACE_{letter.reason}",
        json.dumps(answer, sort_keys=True),
        topic, None, None, letter.key, value,
        None if record is None else record.get("source_id"),
    )


class MarketplaceDeadLetters:
    """The `dead_letter` callback for marketplace sinks: writes to the dead-letter topic."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._producer: Any = None

    def __call__(self, letter: Any) -> None:
        from sinks.kafka import CheckedProducer

        if self._producer is None:
            self._producer = CheckedProducer(self.config.kafka)
        dl = marketplace_dead_letter(self.config, letter)
        self._producer.send(self.config.topics.dead_letter, dl.key,
                            codec("DeadLetter").encode(dl.as_avro()))
        self._producer.flush()  # raises DeliveryError: the sink fails, recovery replays
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
