"""`atpflow replay` on the bundled fixtures equals the hand-checked golden files, byte for byte.

Regenerate after a reviewed behaviour change with ATPFLOW_UPDATE_GOLDENS=1 (then read the diff).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dataflows.cli import main
from operators import steps

FIXTURES = Path(__file__).parent / "fixtures" / "availability"
GOLDEN = FIXTURES / "golden"
CASES = sorted(p.stem for p in FIXTURES.glob("*.jsonl"))


def _replay(fixture: Path, out: Path) -> None:
    assert main(["replay", "--flow", "availability", "--out", str(out), str(fixture)]) == 0


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure"])
@pytest.mark.parametrize("case", CASES)
def test_replay_matches_golden_twice(case: str, compiled: bool, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte for byte, with the compiled order and project steps and without them (an install
    without a C compiler)."""
    if not compiled:
        monkeypatch.setattr(steps, "_order", None)
        monkeypatch.setattr(steps, "_project", None)
    assert (steps._order is not None) == compiled  # a missing build fails here, not skips
    fixture = FIXTURES / f"{case}.jsonl"
    first, second = tmp_path / "a", tmp_path / "b"
    _replay(fixture, first)
    _replay(fixture, second)
    summary = capsys.readouterr().out
    assert "MISMATCH" not in summary
    golden = GOLDEN / case
    if os.environ.get("ATPFLOW_UPDATE_GOLDENS"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(first, golden)
    produced = sorted(p.name for p in first.iterdir())
    assert produced == sorted(p.name for p in golden.iterdir())
    for name in produced:
        expected = (golden / name).read_bytes()
        assert (first / name).read_bytes() == expected, f"{case}/{name} differs from golden"
        assert (second / name).read_bytes() == expected, f"{case}/{name} differs on the second run"


def test_every_output_topic_gets_a_file_even_when_empty(tmp_path: Path) -> None:
    _replay(FIXTURES / "channels.jsonl", tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "availability.shopify-us.jsonl", "availability.amazon-us.jsonl",
        "availability.b2b-portal.jsonl", "atpflow.dead-letter.jsonl", "shipment.milestones.jsonl",
    }
    assert (tmp_path / "atpflow.dead-letter.jsonl").read_text() == ""
