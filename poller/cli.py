"""`poller run | check | schema | demo`, and the operator commands (`poller.operator`).

Nothing the user gave is echoed unredacted (`poller.redaction`), and a stream
file, however broken, ends `check` and `run` with exit 2 and one line per
problem, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from poller.config import ConfigError, StreamConfig, json_schema, load_path
from poller.operator.cli import COMMANDS as OPERATOR_COMMANDS
from poller.operator.cli import add_parsers as add_operator_commands
from poller.operator.cli import run as run_operator_command
from poller.redaction import redact


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a TCP port is 0-65535")
    return port


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="poller", description="Kinesis, DynamoDB Streams and SQS into your database."
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every stream of a file or folder")
    run.add_argument("--config", required=True, help="a stream YAML file, or a folder of them")
    run.add_argument("--http-port", type=_port, default=int(os.environ.get("POLLER_HTTP_PORT", "8080")))
    run.add_argument("--http-host", default=os.environ.get("POLLER_HTTP_HOST", "0.0.0.0"))
    run.add_argument(
        "--shutdown-timeout",
        type=float,
        default=float(os.environ.get("POLLER_SHUTDOWN_TIMEOUT", "25")),
        help="seconds to drain in-flight batches after SIGTERM (ECS waits 30 s)",
    )
    run.add_argument("--log-level", default=os.environ.get("POLLER_LOG_LEVEL", "INFO"))
    run.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default=os.environ.get("POLLER_LOG_FORMAT", "auto"),
    )

    check = sub.add_parser("check", help="validate stream files; exit 0, or 2 with file, field and reason")
    check.add_argument("--config", required=True)

    sub.add_parser("schema", help="print the JSON schema of a stream file")

    esm = sub.add_parser(
        "import-esm", help="Lambda event source mappings (get-event-source-mapping JSON) as stream files"
    )
    esm.add_argument("esm", metavar="ESM.json", help="a mapping's JSON, or a listing of several; - for stdin")
    esm.add_argument("--dsn", help="write rows to this database instead of invoking the function")
    esm.add_argument("--table", help="the table those rows go to (with --dsn)")
    esm.add_argument("--out", help="folder for the files (default: stdout for one mapping, . for several)")

    add_operator_commands(sub)

    demo = sub.add_parser("demo", help="run on embedded defaults: a local AWS emulator and SQLite")
    demo.add_argument("--db", default="demo.sqlite", help="SQLite file the rows go to")
    demo.add_argument("--messages", type=int, default=200, help="sample messages to send")
    demo.add_argument("--http-port", type=_port, default=int(os.environ.get("POLLER_HTTP_PORT", "8080")))
    demo.add_argument("--exit-after", type=float, default=None, help="stop by itself after N seconds")
    return p


def _json_logs(fmt: str) -> bool | None:
    return {"json": True, "console": False}.get(fmt)


def _load(path: str) -> list[StreamConfig] | None:
    """The streams of `path`, or None once every problem is printed to stderr."""
    try:
        return load_path(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
    except Exception as e:  # e.g. a folder that cannot be listed
        print(redact(f"{path}: cannot be loaded: {type(e).__name__}: {e}"), file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.command in OPERATOR_COMMANDS:
        return run_operator_command(args)
    if args.command == "import-esm":
        from poller.esm_import import run

        return run(args.esm, args.dsn, args.table, args.out)
    if args.command == "check":
        streams = _load(args.config)
        if streams is None:
            return 2
        for s in streams:
            print(f"ok: {s.name} ({s.source.type} → {s.sink.type})")
        return 0
    from poller.observability.logging import configure

    if args.command == "demo":
        configure("INFO", json=False if sys.stdout.isatty() else None)
        from poller.demo import run_demo

        return asyncio.run(run_demo(args.db, args.messages, args.http_port, args.exit_after))
    configure(args.log_level, _json_logs(args.log_format))
    streams = _load(args.config)
    if streams is None:
        return 2
    from poller.app import Supervisor
    from poller.observability.logging import get_logger
    from poller.runtime import tune_gc

    tune_gc()
    try:
        return asyncio.run(Supervisor(streams, args.http_port, args.http_host, args.shutdown_timeout).run())
    except Exception:
        # Logged, hence redacted: Python's own traceback printer would show the DSNs.
        get_logger().critical("poller stopped on an unexpected error", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
