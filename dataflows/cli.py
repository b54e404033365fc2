"""atpflow: WMS and ERP movements to channel availability, and shipment milestones, on Bytewax.

New here? `atpflow demo` runs everything locally in about 20 seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dataflows.config import Config, ConfigError, load_config

__all__ = ["main"]

FLOWS = ("availability", "milestones")


def flow_builders(names: list[str]) -> dict[str, Any]:
    """Flow name -> builder(config, source, sink, *, mode, clock)."""
    out: dict[str, Any] = {}
    for name in names:
        if name == "availability":
            from dataflows.availability import build_availability_flow

            out[name] = build_availability_flow
        else:
            from dataflows.milestones import build_milestones_flow

            out[name] = build_milestones_flow
    return out


def config_from_args(args: argparse.Namespace) -> Config:
    """Load --config with the command-line overrides; exits 2 naming each bad field."""
    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        overrides["kafka.bootstrap_servers"] = args.bootstrap
    if getattr(args, "locations", None):
        overrides["reference.locations"] = str(Path(args.locations).resolve())
    if getattr(args, "channels", None):
        overrides["reference.channels"] = str(Path(args.channels).resolve())
    try:
        return load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"atpflow: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _cmd_replay(args: argparse.Namespace) -> int:
    from dataflows.replay import replay

    config = config_from_args(args)
    missing = [f for f in args.fixtures if not Path(f).exists()]
    if missing:
        print(f"atpflow replay: fixture not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    names = list(FLOWS) if args.flow == "all" else [args.flow]
    out = Path(args.out)
    print(f"replaying {len(args.fixtures)} fixture file(s) through {', '.join(names)} -> {out}/",
          file=sys.stderr)
    summary = replay(config, [Path(f) for f in args.fixtures], out,
                     flows=flow_builders(names), progress=True)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary.render())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from dataflows.synthetic import Knobs, generate

    knobs = Knobs(
        movements=args.movements, skus=args.skus, seed=args.seed,
        duplicate_rate=args.duplicates, reorder_rate=args.reorder,
        gap_rate=args.gaps, poison_rate=args.poison,
    )
    counts = generate(knobs, Path(args.out))
    print(f"wrote {sum(counts.values()):,} records to {args.out}: "
          + ", ".join(f"{t}: {n:,}" for t, n in sorted(counts.items())))
    return 0


def _flow_names(choice: str) -> list[str]:
    return list(FLOWS) if choice == "all" else [choice]


def _recovery_dir(config: Config, flow: str) -> Path | None:
    return None if config.recovery.dir is None else config.recovery.dir / flow


def _cmd_recovery_init(args: argparse.Namespace) -> int:
    import subprocess

    config = config_from_args(args)
    if config.recovery.dir is None:
        print("atpflow recovery init: set recovery.dir in the config (or ATPFLOW__RECOVERY__DIR)",
              file=sys.stderr)
        return 2
    for flow in _flow_names(args.flow):
        target = _recovery_dir(config, flow)
        assert target is not None
        if target.exists() and any(target.glob("part-*.sqlite3")):
            print(f"{flow}: recovery partitions already in {target} (kept)")
            continue
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(target), str(args.partitions)],
                       check=True)
        print(f"{flow}: created {args.partitions} recovery partition(s) in {target}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dataflows.demo import run_demo

    return run_demo()


def _cmd_serve(args: argparse.Namespace) -> int:
    from sinks.serve import ServeConfig, serve

    config = config_from_args(args)
    print(f"atpflow serve: http://{args.host}:{args.port}/v1/availability/{{channel}}/{{sku}} "
          f"from Redis {config.redis.url.split('@')[-1]} (prefix {config.redis.prefix}); "
          f"OpenAPI at /openapi.json", file=sys.stderr, flush=True)
    serve(ServeConfig(host=args.host, port=args.port, redis_url=config.redis.url,
                      redis_prefix=config.redis.prefix))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from dataflows.runner import run_flows

    config = config_from_args(args)
    return run_flows(config, args, _flow_names(args.flow))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help="config file (default: the bundled sample config/atpflow.yaml)")
    common.add_argument("--bootstrap", metavar="HOST:PORT",
                        help="Kafka bootstrap servers (overrides the config)")

    parser = argparse.ArgumentParser(prog="atpflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", parents=[common], help="run the dataflows on recorded fixtures, no broker")
    p.add_argument("--out", required=True, help="output directory: one <topic>.jsonl per output topic")
    p.add_argument("--locations", help="locations.yaml (overrides the config's)")
    p.add_argument("--channels", help="channels.yaml (overrides the config's)")
    p.add_argument("--flow", choices=[*FLOWS, "all"], default="all")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("fixtures", nargs="+", metavar="FIXTURE")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("generate", help="write a seeded synthetic fixture")
    p.add_argument("--out", required=True)
    p.add_argument("--movements", type=int, default=10_000)
    p.add_argument("--skus", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duplicates", type=float, default=0.02, help="share of records redelivered")
    p.add_argument("--reorder", type=float, default=0.05, help="share of records delivered late")
    p.add_argument("--gaps", type=float, default=0.001, help="share of records lost")
    p.add_argument("--poison", type=float, default=0.001, help="share of poison records")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("demo", help="local broker + sample data + the dataflows, shown live (about 20 s)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", parents=[common],
                       help="run the dataflows live on Kafka (production entry point)")
    p.add_argument("--flow", choices=[*FLOWS, "all"], default="all")
    p.add_argument("-w", "--workers", type=int, default=1, help="worker threads per process")
    p.add_argument("-i", "--process-id", type=int, help="this process's index in a multi-process cluster")
    p.add_argument("-a", "--addresses", help="';'-separated host:port of every process in the cluster")
    p.add_argument("--stop-at-eof", action="store_true",
                   help="stop once every input partition is read to its end (tests, one-off catch-up)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", parents=[common], help="HTTP lookups of channel availability from Redis")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("recovery", help="crash-recovery state")
    rsub = p.add_subparsers(dest="recovery_command", required=True)
    p = rsub.add_parser("init", parents=[common], help="create the recovery partitions (once per cluster)")
    p.add_argument("--flow", choices=[*FLOWS, "all"], default="all")
    p.add_argument("--partitions", type=int, default=1,
                   help="recovery partitions per flow (any number; Bytewax spreads them over workers)")
    p.set_defaults(func=_cmd_recovery_init)

    from dataflows.commands_kafka import register

    register(sub, parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
