"""The hand-written AvailabilityRecord encoder writes exactly what fastavro writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.fast import encode_availability

longs = st.integers(-(2**63), 2**63 - 1)
names = st.text(min_size=0, max_size=12)
warehouse = st.fixed_dictionaries({
    "warehouse": names, "on_hand": longs, "on_hold": longs, "reserved": longs, "incoming": longs,
    "atp": longs, "erp_book": st.none() | longs, "drift": st.none() | longs,
})
record = st.fixed_dictionaries({
    "channel": names, "sku": names, "location": st.none() | names, "available": longs,
    "previous": st.none() | longs, "version": longs, "as_of": longs, "source": names,
    "source_id": names, "warehouses": st.lists(warehouse, max_size=4), "base": longs,
    "share_pct": st.floats(allow_nan=False), "after_share": longs, "buffer_units": longs,
    "max_qty": longs, "min_qty": longs, "include_incoming": st.booleans(),
})


@settings(max_examples=300, deadline=None)
@given(record)
def test_fast_encoder_equals_fastavro(rec: dict) -> None:
    c = codec("AvailabilityRecord")
    assert encode_availability(rec) == c.encode_generic(rec)
    assert c.decode(encode_availability(rec)) == rec
