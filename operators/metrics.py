"""Prometheus metrics of atpflow, defined once per process.

Every metric lives in the global prometheus-client registry, so a dataflow run by
`python -m bytewax.run` with `BYTEWAX_DATAFLOW_API_ENABLED=true` exposes them on the same
`/metrics` endpoint (port `BYTEWAX_DATAFLOW_API_PORT`, 3030) as Bytewax's own series. A process
that is not run that way (`atpflow serve`, a one-off command) calls `start_metrics_server`.

Why these metrics, in the order an operator asks the questions:

- Is data coming in, and are we keeping up? `atpflow_records_in_total`,
  `atpflow_consumer_lag_messages`, `atpflow_event_time_lag_seconds`.
- Is every record accounted for? The contract says each input record ends applied, dropped as a
  counted duplicate, or dead-lettered: `atpflow_records_applied_total`,
  `atpflow_duplicates_total`, `atpflow_dead_letters_total`, and what goes out,
  `atpflow_records_out_total`.
- Is upstream losing data? `atpflow_gap_skips_total`, `atpflow_open_gaps`,
  `atpflow_reorder_buffered_records`, `atpflow_parked_records`.
- How stale is what channels see? `atpflow_input_to_output_latency_seconds` and
  `atpflow_event_time_to_output_latency_seconds`.
- Do the WMS and the ERP agree? `atpflow_atp_drift_units`.
- Are the marketplaces taking our updates? `atpflow_marketplace_*`.
- Is the rest of the plumbing healthy? `atpflow_redis_write_errors_total`,
  `atpflow_recovery_resumes_total`.

Labels are bounded enumerations only (topic, partition, source, reason, channel, operation,
status): never a sku, order or tracking number, whose cardinality would grow with the business.

Gauges are shared by every worker thread of a process: workers change them with `inc()`/`dec()`
(or `set()` on a label set only one worker owns, such as a partition), never `set()` a total.
Dashboards and alerts `sum` across pods.
"""

from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "child",
    "SOURCES",
    "RECORDS_IN",
    "RECORDS_APPLIED",
    "DUPLICATES",
    "DEAD_LETTERS",
    "RECORDS_OUT",
    "GAP_SKIPS",
    "MARKETPLACE_REQUESTS",
    "MARKETPLACE_THROTTLED",
    "MARKETPLACE_RETRIES",
    "MARKETPLACE_DEAD_LETTERS",
    "MARKETPLACE_DRIFT_REPAIRS",
    "REDIS_WRITE_ERRORS",
    "RECOVERY_RESUMES",
    "CONSUMER_LAG",
    "EVENT_TIME_LAG",
    "REORDER_BUFFERED",
    "OPEN_GAPS",
    "PARKED_RECORDS",
    "MARKETPLACE_CIRCUIT_OPEN",
    "MARKETPLACE_BACKLOG_KEYS",
    "INPUT_TO_OUTPUT_LATENCY",
    "EVENT_TIME_TO_OUTPUT_LATENCY",
    "ATP_DRIFT",
    "MARKETPLACE_REQUEST_LATENCY",
    "start_metrics_server",
    "exported_metric_names",
]

SOURCES = ("wms", "erp", "fulfillment", "carrier")
"""Values of the `source` label: the four upstream streams."""

# Record latency spans milliseconds (straight through) to minutes: a record can wait for a gap
# (gap_timeout, 30 s) or for the item master (unknown_item_timeout, 5 min).
_PIPELINE_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)
# Event time trails further: upstream batching, outages, late corrections hours old.
_EVENT_TIME_LATENCY_BUCKETS = (
    0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
)
# Symmetric around 0: the sign says which system holds more stock.
_DRIFT_BUCKETS = (-1000, -500, -100, -50, -10, -5, -1, 0, 1, 5, 10, 50, 100, 500, 1000)
_HTTP_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- Counters -----------------------------------------------------------------------------

RECORDS_IN = Counter(
    "atpflow_records_in_total",
    "Kafka records read, before decoding, by topic.",
    ["topic"],
)
"""The denominator of every ratio, and the "is anything arriving" signal."""

RECORDS_APPLIED = Counter(
    "atpflow_records_applied_total",
    "Records applied to state after ordering, by source.",
    ["source"],
)
"""With duplicates and dead letters, accounts for every record read."""

DUPLICATES = Counter(
    "atpflow_duplicates_total",
    "Exact redeliveries dropped, by source.",
    ["source"],
)
"""Duplicates are dropped silently by contract; this is the count that makes them visible."""

DEAD_LETTERS = Counter(
    "atpflow_dead_letters_total",
    "Records written to the dead-letter topic, by reason.",
    ["reason"],
)
"""A rising reason points at the upstream system or reference data to fix."""

RECORDS_OUT = Counter(
    "atpflow_records_out_total",
    "Records produced and acknowledged by the broker, by topic.",
    ["topic"],
)
"""Output throughput; with records in, shows whether the flow is moving at all."""

GAP_SKIPS = Counter(
    "atpflow_gap_skips_total",
    "Sequence gaps given up on after gap_timeout or max_buffered, by source.",
    ["source"],
)
"""Each skip is a movement upstream never delivered: ATP may be wrong until the next count."""

MARKETPLACE_REQUESTS = Counter(
    "atpflow_marketplace_requests_total",
    "Marketplace API requests, by channel, operation and HTTP status (or 'error').",
    ["channel", "operation", "status"],
)
"""Error ratios per marketplace operation."""

MARKETPLACE_THROTTLED = Counter(
    "atpflow_marketplace_throttled_total",
    "Marketplace API responses with status 429, by channel and operation.",
    ["channel", "operation"],
)
"""Throttling is expected in bursts; sustained 429s mean our rate limit is set too high."""

MARKETPLACE_RETRIES = Counter(
    "atpflow_marketplace_retries_total",
    "Marketplace API requests retried, by channel and operation.",
    ["channel", "operation"],
)
"""Retries hide failures from the error ratio; this shows how hard we work for each success."""

MARKETPLACE_DEAD_LETTERS = Counter(
    "atpflow_marketplace_dead_letters_total",
    "Marketplace updates given up on and dead-lettered, by channel.",
    ["channel"],
)
"""An update that never reached the channel: the channel shows a stale quantity."""

MARKETPLACE_DRIFT_REPAIRS = Counter(
    "atpflow_marketplace_drift_repairs_total",
    "Marketplace quantities found different from ours and pushed again, by channel.",
    ["channel"],
)
"""Something other than atpflow changes channel quantities (or our pushes are being lost)."""

REDIS_WRITE_ERRORS = Counter(
    "atpflow_redis_write_errors_total",
    "Failed writes to the Redis availability view.",
)
"""The Redis view serves `atpflow serve`; failed writes leave it stale."""

RECOVERY_RESUMES = Counter(
    "atpflow_recovery_resumes_total",
    "Starts that resumed from a recovery snapshot.",
)
"""Each resume re-emits records since the last snapshot; frequent resumes mean a crash loop."""

# --- Gauges -------------------------------------------------------------------------------

CONSUMER_LAG = Gauge(
    "atpflow_consumer_lag_messages",
    "High watermark minus next offset to read, by topic and partition.",
    ["topic", "partition"],
)
"""How far behind the broker we are, in messages; growth means we cannot keep up."""

EVENT_TIME_LAG = Gauge(
    "atpflow_event_time_lag_seconds",
    "Processing time minus the newest applied event time, by source.",
    ["source"],
)
"""How old the newest applied fact is: catches a stalled source that offset lag cannot."""

REORDER_BUFFERED = Gauge(
    "atpflow_reorder_buffered_records",
    "Records held in reorder buffers waiting for a missing sequence number.",
)
"""Memory held by ordering, and the early warning before gap skips."""

OPEN_GAPS = Gauge(
    "atpflow_open_gaps",
    "Streams currently waiting for a missing sequence number.",
)
"""Gaps that may still close; a steady level means upstream delivers out of order."""

PARKED_RECORDS = Gauge(
    "atpflow_parked_records",
    "Records parked behind an unknown item or tracking number.",
)
"""Reference data lagging the movements; parked records dead-letter at their timeout."""

MARKETPLACE_CIRCUIT_OPEN = Gauge(
    "atpflow_marketplace_circuit_open",
    "1 while the circuit breaker of a marketplace operation is open, else 0.",
    ["channel", "operation"],
)
"""While open, the channel receives nothing and its quantities age."""

MARKETPLACE_BACKLOG_KEYS = Gauge(
    "atpflow_marketplace_backlog_keys",
    "Keys whose newest quantity is not yet accepted by the marketplace, by channel.",
    ["channel"],
)
"""The size of the oversell window: keys the channel still shows an old quantity for."""

# --- Histograms ---------------------------------------------------------------------------

INPUT_TO_OUTPUT_LATENCY = Histogram(
    "atpflow_input_to_output_latency_seconds",
    "Input record broker timestamp to output record produced, by output topic.",
    ["topic"],
    buckets=_PIPELINE_LATENCY_BUCKETS,
)
"""Our own contribution to staleness, including reorder and parking waits."""

EVENT_TIME_TO_OUTPUT_LATENCY = Histogram(
    "atpflow_event_time_to_output_latency_seconds",
    "Event time of the causing movement to output record produced, by output topic.",
    ["topic"],
    buckets=_EVENT_TIME_LATENCY_BUCKETS,
)
"""End-to-end staleness as a channel sees it, upstream delays included."""

ATP_DRIFT = Histogram(
    "atpflow_atp_drift_units",
    "ERP book stock minus WMS on hand, in base units, observed at each ERP snapshot.",
    buckets=_DRIFT_BUCKETS,
)
"""How much the two systems of record disagree; persistent drift means a missing feed."""

MARKETPLACE_REQUEST_LATENCY = Histogram(
    "atpflow_marketplace_request_latency_seconds",
    "Marketplace API request duration, by channel and operation.",
    ["channel", "operation"],
    buckets=_HTTP_LATENCY_BUCKETS,
)
"""Slow marketplace APIs build the backlog before they fail outright."""

# Zero-valued series from the start, so that `increase()` sees the first event of each source
# rather than a series appearing at 1.
for _source in SOURCES:
    RECORDS_APPLIED.labels(source=_source)
    DUPLICATES.labels(source=_source)
    GAP_SKIPS.labels(source=_source)
del _source

_METRICS: tuple[Counter | Gauge | Histogram, ...] = (
    RECORDS_IN,
    RECORDS_APPLIED,
    DUPLICATES,
    DEAD_LETTERS,
    RECORDS_OUT,
    GAP_SKIPS,
    MARKETPLACE_REQUESTS,
    MARKETPLACE_THROTTLED,
    MARKETPLACE_RETRIES,
    MARKETPLACE_DEAD_LETTERS,
    MARKETPLACE_DRIFT_REPAIRS,
    REDIS_WRITE_ERRORS,
    RECOVERY_RESUMES,
    CONSUMER_LAG,
    EVENT_TIME_LAG,
    REORDER_BUFFERED,
    OPEN_GAPS,
    PARKED_RECORDS,
    MARKETPLACE_CIRCUIT_OPEN,
    MARKETPLACE_BACKLOG_KEYS,
    INPUT_TO_OUTPUT_LATENCY,
    EVENT_TIME_TO_OUTPUT_LATENCY,
    ATP_DRIFT,
    MARKETPLACE_REQUEST_LATENCY,
)


def start_metrics_server(port: int) -> None:
    """Serve `/metrics` from a background thread, for processes Bytewax does not serve.

    Not for a dataflow under `python -m bytewax.run` with the dataflow API enabled: that
    endpoint already exposes these metrics, and a second server would clash on its port.

    Args:
        port: TCP port to listen on, on all interfaces.
    """
    start_http_server(port)


def exported_metric_names() -> set[str]:
    """Return the sample names Prometheus scrapes for the metrics of this module.

    Counters as `<name>_total`, histograms as `<name>_bucket`, `<name>_count` and, unless a
    bucket bound is negative, `<name>_sum`; gauges as they are. The `_created` series
    prometheus-client adds are left out: nothing should query them.

    Returns:
        The names, for checking dashboards and alert rules against.
    """
    names: set[str] = set()
    for metric in _METRICS:
        for family in metric.describe():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update((f"{family.name}_bucket", f"{family.name}_count"))
                # prometheus-client drops _sum when observations can be negative (the drift
                # histogram): a sum that can go down is not a counter.
                if metric is not ATP_DRIFT:
                    names.add(f"{family.name}_sum")
            else:
                names.add(family.name)
    return names


@cache
def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: the hot steps count per batch, and `labels()`
    takes a lock and builds its key on every call. Labels are bounded enumerations (above),
    so the cache stays small."""
    return metric.labels(*values)

