"""Operator commands: `status`, `checkpoints show | rewind`, `failures list | replay`,
`iam-policy`.

They read and write the same stores the daemon does (the sink's bookkeeping
tables, the failure destination, the source itself), never a daemon's memory,
so they work whether or not a daemon runs (those that write under one refuse
to, unless forced). Invariants:

- A rewind writes only checkpoint rows the daemon already knows how to read
  (a shard's row, the stream's `#start` row) and takes effect at the next start.
- Leases (`coordination:`) are read, never taken: a rewind is refused while a
  worker holds a live one on what it rewrites, unless forced, decided with the
  lease rows locked (SQL) or as the condition of its writes (DynamoDB). Its
  one lease write opens again an ended lease whose shard it makes unfinished,
  conditional on the counter as read, like every lease write.
- Without `coordination:`, a rewind or a replay is refused while a daemon is
  live on the stream (`poller_daemons`), unless forced.
- A replayed failure is marked processed in the transaction that writes its
  rows, so a second replay writes nothing twice.
- Nothing here prints a DSN's password (`poller.redaction`).
"""
