"""SIGKILL, SIGTERM and scale-out on real processes (the quick part of the fault suite).

Each scenario starts its own Tansu broker and `atpflow run` processes (stopped by pid),
publishes a synthetic fixture at a steady pace while killing Bytewax worker processes
at random points (the first kill during the first epoch, before any snapshot),
restarts them at once as Kubernetes would, stops them once with SIGTERM, and then
requires what `atpflow replay` makes of the same fixture:

- the last record per key (by version) on every availability topic equals the replay;
- every dead letter of the replay is on the dead-letter topic (duplicates allowed);
- every input record is accounted for: all input offsets consumed, and the final ATP
  cells and stream positions in the recovery store equal the replay's (a lost or doubly
  applied movement changes a cell);
- SIGTERM exits 0 within 10 s and the restart re-emits nothing (the stop snapshotted).

The long version (10 kills, a 30 s broker freeze, 2 processes, a large fixture) is
`python scripts/reliability.py` (see docs/RELIABILITY.md) or `pytest -m "faults and slow"`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from dataflows.broker import LocalBroker
from dataflows.synthetic import Knobs, generate
from tests.faults.harness import Cluster, cli, kill_scenario, wait_for, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fixture") / "synthetic.jsonl"
    generate(Knobs(movements=8_000, skus=120, seed=23), path)
    return path


def _check(result, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp / "result.json").write_text(json.dumps(result.as_dict(), indent=1, default=str))
    log = (tmp / "run.log").read_text() if (tmp / "run.log").exists() else ""
    assert not result.problems, "\n".join(result.problems) + "\n" + log[-3000:]
    assert result.keys_wrong == 0 and result.letters_missing == 0
    assert result.cells_wrong == 0 and result.streams_wrong == 0 and result.lag_after == 0


def test_sigkill_five_times_then_sigterm_equals_replay(fixture_path: Path, tmp_path: Path) -> None:
    result = kill_scenario(tmp_path, fixture_path, kills=5, publish_seconds=8.0,
                           between_kills=(1.5, 3.0), graceful_after_kill=2, seed=5)
    _check(result, tmp_path)
    assert len(result.kills) == 5
    assert any(k["first_epoch"] for k in result.kills)
    assert [g["exit_codes"] for g in result.graceful] == [[0]]
    assert result.graceful[0]["re_emitted_after_restart"] == 0


def test_two_processes_killed_and_resumed_equal_one_worker_replay(fixture_path: Path,
                                                                 tmp_path: Path) -> None:
    """Scale-out: 2 processes x 2 workers, one process killed twice, same final outputs."""
    result = kill_scenario(tmp_path, fixture_path, kills=2, processes=2, workers=2,
                           publish_seconds=6.0, between_kills=(2.0, 3.0),
                           graceful_after_kill=None, require_first_epoch=False, seed=9)
    _check(result, tmp_path)
    assert all(len(k["exit_codes"]) == 2 and None not in k["exit_codes"] for k in result.kills), \
        "the surviving process must exit when its peer dies (so that it restarts)"


def test_a_dead_flow_stops_the_run_so_that_it_restarts(tmp_path: Path) -> None:
    """`atpflow run --flow all`: SIGKILL the availability worker; the wrapper must not wait on."""
    with LocalBroker() as broker:
        cfg = write_config(tmp_path / "atpflow.yaml", broker.bootstrap,
                           recovery_dir=tmp_path / "rec")
        cli("topics", "create", "--config", str(cfg))
        cli("recovery", "init", "--config", str(cfg))
        cluster = Cluster(cfg, tmp_path / "logs", flow="all")
        cluster.start()
        try:
            pids = cluster.worker_pids(expected=2)
            assert len(pids) == 2, cluster.log_tail()
            time.sleep(1.0)
            availability = next(p for p in pids if "availability" in " ".join(
                psutil.Process(p).cmdline()))
            os.kill(availability, signal.SIGKILL)
            codes = cluster.wait(12)
            assert codes[0] not in (None, 0), f"atpflow run kept running: {cluster.log_tail()}"
            assert wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                            != psutil.STATUS_ZOMBIE for p in pids), 5, 0.1)
        finally:
            cluster.stop()


def test_worker_dies_with_a_killed_wrapper(tmp_path: Path) -> None:
    """SIGKILL of `atpflow run` itself must not leave an orphaned worker behind."""
    with LocalBroker() as broker:
        cfg = write_config(tmp_path / "atpflow.yaml", broker.bootstrap)
        cli("topics", "create", "--config", str(cfg))
        cluster = Cluster(cfg, tmp_path / "logs")
        cluster.start()
        try:
            (worker,) = cluster.worker_pids()
            cluster.procs[0].kill()
            cluster.procs[0].wait(5)
            assert wait_for(lambda: not psutil.pid_exists(worker)
                            or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, 5, 0.1)
        finally:
            cluster.stop()
