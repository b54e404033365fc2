"""`atpflow run`: check the config and the brokers, then start `python -m bytewax.run`.

A thin wrapper: the dataflow runs exactly as Bytewax runs it (so its
multi-worker, multi-process and recovery options all apply); this module
only makes the failure modes clear before anything starts and forwards
SIGTERM/SIGINT so that Kubernetes can stop the pods.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataflows.config import Config
from dataflows.live import CONFIG_ENV, STOP_AT_EOF_ENV

__all__ = ["bytewax_command", "run_flows"]

#: How long children get to stop after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 8.0


def bytewax_command(config: Config, flow: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "bytewax.run", f"dataflows.live:{flow}"]
    if args.process_id is not None or args.addresses:
        if args.process_id is None or not args.addresses:
            msg = "-i/--process-id and -a/--addresses go together"
            raise SystemExit(f"atpflow run: {msg}")
        cmd += ["-i", str(args.process_id), "-a", args.addresses]
    cmd += ["-w", str(args.workers)]
    if config.recovery.dir is not None:
        cmd += ["-r", str(config.recovery.dir / flow), "-s", f"{config.recovery.snapshot_interval:g}",
                "-b", f"{config.recovery.backup_interval:g}"]
    return cmd


def _env(config: Config, args: argparse.Namespace, index: int) -> dict[str, str]:
    env = dict(os.environ)
    config_path = getattr(args, "config", None)
    if config_path:
        env[CONFIG_ENV] = str(Path(config_path).resolve())
    if getattr(args, "bootstrap", None):
        env["ATPFLOW__KAFKA__BOOTSTRAP_SERVERS"] = args.bootstrap
    if args.stop_at_eof:
        env[STOP_AT_EOF_ENV] = "1"
    env.setdefault("BYTEWAX_DATAFLOW_API_ENABLED", "true")
    # One metrics endpoint per flow process: the second flow listens on the next port.
    env["BYTEWAX_DATAFLOW_API_PORT"] = str(config.metrics_port + index)
    return env


def run_flows(config: Config, args: argparse.Namespace, flows: list[str]) -> int:
    from dataflows.commands_kafka import check_brokers
    from sinks.kafka import BrokerUnavailable

    try:
        check_brokers(config)
    except BrokerUnavailable as exc:
        print(f"atpflow run: {exc}", file=sys.stderr)
        return 2
    # In a multi-process cluster only process 0 holds the recovery partitions (Bytewax
    # spreads them over workers itself), so only a single process or process 0 checks.
    if config.recovery.dir is not None and not args.process_id:
        missing = [f for f in flows if not any((config.recovery.dir / f).glob("part-*.sqlite3"))]
        if missing:
            print(f"atpflow run: no recovery partitions for {', '.join(missing)} in "
                  f"{config.recovery.dir}; run `atpflow recovery init` first", file=sys.stderr)
            return 2
    children = []
    for i, flow in enumerate(flows):
        cmd = bytewax_command(config, flow, args)
        print(f"atpflow run: starting {flow}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        children.append(subprocess.Popen(cmd, env=_env(config, args, i)))

    def stop(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = []
    for child in children:
        try:
            codes.append(child.wait())
        except KeyboardInterrupt:
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if child.poll() is None:
                child.kill()
            codes.append(child.wait())
    return max((abs(c) for c in codes), default=0)
