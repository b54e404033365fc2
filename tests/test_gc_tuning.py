"""The garbage-collector settings of dataflow processes."""

from __future__ import annotations

import gc

import pytest

from dataflows.gc_tuning import DEFAULT_THRESHOLDS, tune_gc


@pytest.fixture(autouse=True)
def _restore_gc():  # type: ignore[no-untyped-def]
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_defaults_freeze_start_up_objects_and_raise_the_oldest_threshold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATPFLOW_GC_THRESHOLDS", raising=False)
    assert tune_gc() == DEFAULT_THRESHOLDS
    assert gc.get_threshold() == DEFAULT_THRESHOLDS
    assert gc.get_freeze_count() > 0


def test_environment_overrides_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATPFLOW_GC_THRESHOLDS", "700,10,10")
    assert tune_gc() == (700, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("bad", ["700,10", "a,b,c", "700,0,10", "1,2,3,4"])
def test_bad_thresholds_stop_with_a_message_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("ATPFLOW_GC_THRESHOLDS", bad)
    with pytest.raises(SystemExit, match="ATPFLOW_GC_THRESHOLDS must be three positive integers"):
        tune_gc()
