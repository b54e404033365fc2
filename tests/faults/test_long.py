"""The long part of the fault suite: `pytest -m "faults and slow"` (about 10 minutes).

A larger fixture, 10 SIGKILLs of a 2-process cluster, one SIGTERM and a 30 s broker
freeze (SIGSTOP/SIGCONT); the same verdicts as the quick part. `scripts/reliability.py`
runs the same scenario (plus the memory measurement) and writes docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflows.synthetic import Knobs, generate
from tests.faults.harness import kill_scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.slow]


@pytest.mark.timeout(1800)
def test_ten_kills_a_sigterm_and_a_frozen_broker_lose_nothing(tmp_path: Path) -> None:
    fixture = tmp_path / "synthetic.jsonl"
    generate(Knobs(movements=100_000, skus=1_000, seed=42), fixture)
    result = kill_scenario(tmp_path / "run", fixture, kills=10, processes=2, workers=1,
                           publish_seconds=60.0, between_kills=(3.0, 8.0),
                           graceful_after_kill=3, freeze_seconds=30.0, gap_timeout=15.0,
                           unknown_item_timeout=5.0, converge_timeout=600.0, seed=42)
    (tmp_path / "result.json").write_text(json.dumps(result.as_dict(), indent=1, default=str))
    assert not result.problems, "\n".join(result.problems)
    assert len(result.kills) == 10 and any(k["first_epoch"] for k in result.kills)
    assert result.freezes and result.graceful[0]["exit_codes"] == [0, 0]
