"""`atpflow run`: check the config and the brokers, then start `python -m bytewax.run`.

A thin wrapper: the dataflow runs exactly as Bytewax runs it (so its
multi-worker, multi-process and recovery options all apply); this module
only makes the failure modes clear before anything starts and forwards
SIGTERM/SIGINT so that Kubernetes can stop the pods.

Supervision rules (each found by the fault-injection suite, tests/faults/):

- A child that dies (SIGKILL, a crash, a cluster peer gone) ends the run: the other
  flow's child is stopped and `atpflow run` exits non-zero, so the supervisor restarts
  the whole process and every flow resumes from its recovery store. Before, the
  wrapper kept waiting on the surviving flow and the dead one was never restarted.
- Children die with the wrapper (`PR_SET_PDEATHSIG`): a wrapper killed with SIGKILL
  leaves no orphaned worker writing to the recovery store next to its replacement.
- SIGTERM is bounded: children get `STOP_GRACE_SECONDS` to drain, flush and snapshot
  (exit 0); one still running then is killed and the run exits non-zero. Nothing is
  lost that way: the recovery store resumes from the last snapshot.
- `BYTEWAX_DATAFLOW_API_ENABLED=false` turns the metrics endpoint off (Bytewax starts
  it whenever the variable is set at all, whatever its value).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataflows.config import Config
from dataflows.live import CONFIG_ENV, STOP_AT_EOF_ENV

#: Built by setup.py where a C compiler is; without them atpflow runs the same, slower.
COMPILED_PARTS = (
    "schemas._avro", "operators._sort", "operators._order", "operators._project", "sinks._kafka",
)


def missing_compiled_parts() -> list[str]:
    """The compiled parts this install lacks (scripts/setup.sh reports them too)."""
    return [name for name in COMPILED_PARTS if importlib.util.find_spec(name) is None]

__all__ = ["bytewax_command", "run_flows"]

#: How long children get to stop after SIGTERM before they are killed (Kubernetes waits 30 s
#: by default; the contract asks for an exit within 10 s).
STOP_GRACE_SECONDS = 8.0
#: Exit code when a child had to be killed after the grace period.
KILLED_AFTER_GRACE = 3
_API_ENABLED = "BYTEWAX_DATAFLOW_API_ENABLED"
_FALSE = ("", "0", "false", "no", "off")


def bytewax_command(config: Config, flow: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "bytewax.run", f"dataflows.live:{flow}"]
    if args.process_id is not None or args.addresses:
        if args.process_id is None or not args.addresses:
            msg = "-i/--process-id and -a/--addresses go together"
            raise SystemExit(f"atpflow run: {msg}")
        cmd += ["-i", str(args.process_id), "-a", args.addresses]
    cmd += ["-w", str(args.workers)]
    if config.recovery.dir is not None:
        cmd += ["-r", str(config.recovery.dir / flow),
                "-s", f"{config.recovery.snapshot_interval:g}",
                "-b", f"{config.recovery.backup_interval:g}"]
    else:
        # Without recovery -s only sets the epoch: checkpoint sinks flush this often.
        cmd += ["-s", f"{config.epoch_interval:g}"]
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
    if env.get(_API_ENABLED, "true").strip().lower() in _FALSE:
        env.pop(_API_ENABLED, None)  # Bytewax serves the API if the variable is set at all
        env.pop("BYTEWAX_DATAFLOW_API_PORT", None)
        return env
    env[_API_ENABLED] = "true"
    # One metrics endpoint per flow process: the second flow listens on the next port. Several
    # processes of one cluster on one host (all addresses loopback) each take their own pair.
    port = config.metrics_port + index
    if args.addresses and args.process_id and all(
        a.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "::1") for a in args.addresses.split(";")
    ):
        port += 2 * args.process_id
    env["BYTEWAX_DATAFLOW_API_PORT"] = str(port)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the wrapper dies (Linux; no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_children(children: list[subprocess.Popen[bytes]], signum: int, grace: float) -> None:
    """Signal every running child and wait up to `grace` s; kill the rest."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)
    deadline = time.monotonic() + grace
    while any(c.poll() is None for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


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
        if "availability" in flows:
            from dataflows.availability import RETIRED_STEPS
            from dataflows.commands_kafka import stored_steps

            where = config.recovery.dir / "availability"
            retired = sorted(stored_steps(where) & RETIRED_STEPS)
            if retired:
                print(f"atpflow run: the recovery store {where} holds state of steps this version "
                      f"no longer has ({', '.join(retired)}) and cannot resume it: start the "
                      "availability flow from scratch (delete that directory, then `atpflow "
                      "recovery init`; see docs/OPERATIONS.md)", file=sys.stderr)
                return 2
    missing = missing_compiled_parts()
    if missing:
        print(f"atpflow run: compiled parts not built ({', '.join(missing)}; reinstall with a C "
              "compiler: pip install -e .); running on fastavro and pure Python, slower",
              file=sys.stderr)
    children: list[subprocess.Popen[bytes]] = []
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    for i, flow in enumerate(flows):
        cmd = bytewax_command(config, flow, args)
        print(f"atpflow run: starting {flow}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        children.append(subprocess.Popen(cmd, env=_env(config, args, i),  # noqa: S603
                                         preexec_fn=preexec))

    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline: float | None = None
    try:
        while any(c.poll() is None for c in children):
            if stopping and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                print(f"atpflow run: still running {STOP_GRACE_SECONDS:g} s after "
                      f"{signal.Signals(stopping[0]).name}: killing (the next start resumes from "
                      "the last snapshot)", file=sys.stderr, flush=True)
                _stop_children(children, signal.SIGKILL, 0)
                return KILLED_AFTER_GRACE
            failed = [(f, c.returncode) for f, c in zip(flows, children, strict=True)
                      if c.returncode not in (None, 0)]
            if failed and not stopping:
                flow, code = failed[0]
                print(f"atpflow run: {flow} exited with {code}: stopping the other flows so that "
                      "the whole process restarts and resumes", file=sys.stderr, flush=True)
                _stop_children(children, signal.SIGTERM, STOP_GRACE_SECONDS)
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop_children(children, signal.SIGINT, STOP_GRACE_SECONDS)
    codes = [c.wait() for c in children]
    return max((abs(c) for c in codes), default=0)
