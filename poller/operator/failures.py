"""`poller failures list | replay`: the command side (the stores are in
`failure_stores`, the replay in `replay`)."""

from __future__ import annotations

from poller.config import StreamConfig
from poller.operator.failure_stores import FailureItem, failure_store
from poller.operator.render import one_line, table
from poller.operator.replay import ReplayReport
from poller.operator.replay import replay as replay
from poller.operator.stores import open_store


async def listing(cfg: StreamConfig, limit: int | None) -> list[FailureItem]:
    async with open_store(cfg) as store:
        failures = failure_store(cfg, store)
        try:
            return await failures.items(limit)
        finally:
            await failures.close()


def listing_text(name: str, items: list[FailureItem]) -> str:
    head = f"stream {name}: {len(items)} failed record(s) listed"
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
    if report.not_found:
        lines.append(f"  not found (replayed already, or no such id): {', '.join(report.not_found)}")
    return "\n".join(lines)
