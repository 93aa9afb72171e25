"""`poller failures list | replay`: the command side (the stores are in
`failure_stores`, the replay in `replay`)."""

from __future__ import annotations

from poller.config import StreamConfig
from poller.operator.failure_stores import FailureItem, Unreadable, failure_store
from poller.operator.render import one_line, table
from poller.operator.replay import ReplayReport
from poller.operator.replay import replay as replay
from poller.operator.stores import open_store

MAX_UNREADABLE_SHOWN = 100


async def listing(cfg: StreamConfig, limit: int | None) -> tuple[list[FailureItem], list[Unreadable]]:
    """The failed records (oldest first), and the lines of a failure file that are none."""
    async with open_store(cfg) as store:
        failures = failure_store(cfg, store)
        try:
            return await failures.items(limit), failures.unreadable
        finally:
            await failures.close()


def unreadable_text(lines: list[Unreadable]) -> str:
    """For stderr: one line for each line of the failure file that is no failure record."""
    shown = [f"unreadable line {u.text()}" for u in lines[:MAX_UNREADABLE_SHOWN]]
    if len(lines) > MAX_UNREADABLE_SHOWN:
        shown.append(f"... and {len(lines) - MAX_UNREADABLE_SHOWN} more unreadable line(s)")
    return "\n".join(shown)


def listing_text(name: str, items: list[FailureItem], unreadable: list[Unreadable]) -> str:
    head = f"stream {name}: {len(items)} failed record(s) listed"
    if unreadable:
        head += f"; {len(unreadable)} unreadable line(s) in the failure file (on stderr)"
    if not items:
        return head
    rows = [
        [
            i.id,
            i.shard_id or "-",
            i.sequence_number or "-",
            i.reason,
            str(i.attempts),
            one_line(i.error_message, 60),
            one_line(i.payload.decode("utf-8", "backslashreplace"), 40),
        ]
        for i in items
    ]
    headers = ["ID", "SHARD", "SEQUENCE", "REASON", "ATTEMPTS", "ERROR", "PAYLOAD"]
    return head + "\n" + table(headers, rows, "  ")


def replay_text(name: str, report: ReplayReport) -> str:
    lines = [
        f"stream {name}: {len(report.replayed)} replayed, {len(report.filtered)} filtered out, "
        f"{len(report.already)} replayed already, {len(report.failed)} failed again"
    ]
    lines += [f"  failed again: {i}: {one_line(err, 200)}" for i, err in report.failed.items()]
    if report.unreadable:
        numbers = ", ".join(str(u.line) for u in report.unreadable)
        lines.append(f"  unreadable lines of the failure file, not replayed (on stderr): {numbers}")
    if report.not_found:
        lines.append(f"  not found (replayed already, or no such id): {', '.join(report.not_found)}")
    return "\n".join(lines)
