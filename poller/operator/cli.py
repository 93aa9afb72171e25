"""The operator subcommands' arguments and their dispatch (`poller.cli` adds them).

Exit codes: 0 done; 1 the command could not do it (a store or the source
unreachable, a stream with no checkpoints, ...), one line on stderr; 2 the
stream files are invalid, as `poller check`; 3 (`failures list | replay`) done,
but the failure file has lines that are no failure record (a torn line of a
crash), each named on stderr by its line number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from poller.config import ConfigError, StreamConfig, load_path
from poller.operator.errors import OperatorError
from poller.records import RecordError, TransientError
from poller.redaction import redact

COMMANDS = ("status", "checkpoints", "failures", "iam-policy")
EXIT_UNREADABLE_LINES = 3


def _moment(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError("an ISO 8601 time, e.g. 2024-05-01T12:00:00Z") from None


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def add_parsers(sub: Any) -> None:
    status = sub.add_parser("status", help="per stream and shard: state, owner, checkpoint, lag, failures")
    status.add_argument("--config", required=True, help="a stream YAML file, or a folder of them")
    status.add_argument("--stream", help="only this stream")
    status.add_argument("--json", action="store_true", help="JSON for scripts")

    checkpoints = sub.add_parser("checkpoints", help="show or rewind a stream's checkpoints")
    checkpoints.add_argument("--config", required=True)
    actions = checkpoints.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the stored checkpoint rows")
    show.add_argument("--stream", help="only this stream")
    show.add_argument("--json", action="store_true")
    rewind = actions.add_parser("rewind", help="move a stream (or one shard) back or forward; next start")
    rewind.add_argument("--stream", required=True)
    rewind.add_argument("--shard", help="only this shard (and its descendants)")
    where = rewind.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-timestamp", type=_moment, metavar="ISO8601")
    where.add_argument("--trim-horizon", action="store_true", help="the oldest record still kept")
    where.add_argument("--latest", action="store_true", help="skip what is in the stream now")
    rewind.add_argument(
        "--force",
        action="store_true",
        help="write it even while a worker holds a live lease on those shards, or (without "
        "coordination) a daemon runs the stream: a running one overwrites a shard's checkpoint "
        "at its next commit",
    )
    rewind.add_argument("--dry-run", action="store_true", help="print what it would replace; write nothing")
    rewind.add_argument("--json", action="store_true")

    failures = sub.add_parser("failures", help="list or replay what is in a stream's failure destination")
    failures.add_argument("--config", required=True)
    what = failures.add_subparsers(dest="action", required=True)
    listing = what.add_parser("list", help="failed records, oldest first")
    listing.add_argument("--stream", required=True)
    listing.add_argument("--limit", type=_positive, default=50)
    listing.add_argument("--json", action="store_true")
    replay = what.add_parser("replay", help="back through decode, filter, map and sink, exactly once")
    replay.add_argument("--stream", required=True)
    replay.add_argument("--id", nargs="+", dest="ids", metavar="ID", help="only these (default: all)")
    replay.add_argument(
        "--force",
        action="store_true",
        help="replay even while a daemon runs the stream (without coordination)",
    )
    replay.add_argument("--json", action="store_true")

    iam = sub.add_parser("iam-policy", help="least-privilege IAM policy JSON for these streams")
    iam.add_argument("--config", required=True)
    iam.add_argument(
        "--kms-key",
        action="append",
        default=[],
        metavar="ARN",
        help="a KMS key that encrypts a stream or queue (repeat for several)",
    )


def _quiet_logs() -> None:
    """Warnings only, on stderr: stdout is the command's answer."""
    import structlog

    from poller.observability.logging import configure

    configure("WARNING", json=False)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def _streams(path: str, name: str | None) -> list[StreamConfig]:
    streams = load_path(path)
    if name is None:
        return streams
    chosen = [s for s in streams if s.name == name]
    if not chosen:
        names = ", ".join(s.name for s in streams)
        raise OperatorError(f"no stream named {name!r} in {path} (streams: {names})")
    return chosen


def run(args: argparse.Namespace) -> int:
    try:
        _quiet_logs()
        return asyncio.run(_run(args))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (OperatorError, TransientError, RecordError) as e:
        print(redact(f"error: {e}"), file=sys.stderr)
        return 1
    except Exception as e:  # one redacted line, never a traceback that could quote a DSN
        print(redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1


def _print(value: Any) -> None:
    print(value if isinstance(value, str) else json.dumps(value, indent=2, default=str))


async def _run(args: argparse.Namespace) -> int:
    if args.command == "iam-policy":
        from poller.operator.iam import policy

        _print(policy(load_path(args.config), args.kms_key))
        return 0
    if args.command == "status":
        from poller.operator import status

        results = [await status.stream_status(cfg) for cfg in _streams(args.config, args.stream)]
        print(redact(status.as_json(results) if args.json else status.as_text(results)))
        return 1 if any(r.errors for r in results) else 0
    if args.command == "checkpoints":
        return await _checkpoints(args)
    return await _failures(args)


async def _checkpoints(args: argparse.Namespace) -> int:
    from poller.operator import checkpoints

    if args.action == "show":
        shown: dict[str, Any] = {}
        for cfg in _streams(args.config, args.stream):
            if cfg.source.type == "sqs" and args.stream is None:
                continue  # no checkpoints to show
            rows = await checkpoints.show(cfg)
            shown[cfg.name] = (
                checkpoints.show_json(rows) if args.json else checkpoints.show_text(cfg.name, rows)
            )
        _print(shown if args.json else "\n".join(shown.values()))
        return 0
    (cfg,) = _streams(args.config, args.stream)
    if args.to_timestamp is not None:
        target = checkpoints.Target("timestamp", args.to_timestamp)
    else:
        target = checkpoints.Target("trim_horizon" if args.trim_horizon else "latest")
    rewound = await checkpoints.rewind(cfg, target, args.shard, force=args.force, dry_run=args.dry_run)
    _warn_forced(cfg.name, rewound.guard)
    _print(checkpoints.rewind_json(rewound) if args.json else checkpoints.rewind_text(cfg.name, rewound))
    return 0


def _warn_forced(name: str, guard: Any) -> None:
    from poller.operator.guard import forced_text

    warning = forced_text(name, guard) if guard is not None else None
    if warning:
        print(redact(warning), file=sys.stderr)


async def _failures(args: argparse.Namespace) -> int:
    from poller.operator import failures

    (cfg,) = _streams(args.config, args.stream)
    if args.action == "list":
        items, unreadable = await failures.listing(cfg, args.limit)
        _print(
            [i.summary() for i in items] if args.json else failures.listing_text(cfg.name, items, unreadable)
        )
    else:
        report = await failures.replay(cfg, args.ids, force=args.force)
        _warn_forced(cfg.name, report.guard)
        unreadable = report.unreadable
        _print(report.as_dict() if args.json else failures.replay_text(cfg.name, report))
    if unreadable:
        print(redact(failures.unreadable_text(unreadable)), file=sys.stderr)
        return EXIT_UNREADABLE_LINES
    return 0
