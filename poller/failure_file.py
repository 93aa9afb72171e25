"""A failure file (the `file` destination, and `on_failure.fallback_path`):
JSON lines, one failure record a line, appended, never rewritten.

Invariants of `append_lines`:

- A record starts on a fresh line: a torn last line (a crash or a full disk in
  the middle of an earlier write, by this process or another) stays a line of
  its own, and is never merged with the record written after it.
- A write either lands whole or leaves the file as it was: on any error the
  file is truncated back to the size it had before this append.
- What was written is on disk when `append_lines` returns (the file fsynced;
  the folder fsynced too when the file was created, so the file's name
  survives a power loss along with its content).
- Appends to one file are serialized by an exclusive `flock`, between the
  streams of one process and between processes alike, so that a truncation
  after an error never cuts another writer's record.

A path that is not a regular file (`/dev/stdout`, a pipe) is only written to:
it has no last byte to read back, no size to truncate to.

`read_lines` gives every line back with its number, parsed or not: a line that
is not a JSON object (a torn line) is reported by its number, never skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_EXCERPT = 80


def append_lines(path: Path, lines: bytes) -> None:
    """Append `lines` (each ending in a newline) as above; OSError when they could not be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, created = _open(path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/stdout, a pipe: written, no more
            _write_all(fd, lines)
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = os.fstat(fd).st_size
        data = lines if start == 0 or os.pread(fd, 1, start - 1) == b"\n" else b"\n" + lines
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            _truncate(fd, start)
            raise
    finally:
        os.close(fd)  # releases the flock
    if created:
        _fsync_folder(path.parent)


def _open(path: Path) -> tuple[int, bool]:
    """The file opened for reading its last byte and appending; True when this call created it."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags), False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _truncate(fd: int, size: int) -> None:
    """Back to `size`, best effort: the write's own error is the one to report."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a failure file: `doc` is its JSON object, or None with `error` saying why not."""

    number: int
    raw: bytes
    doc: dict[str, Any] | None
    error: str = ""

    def excerpt(self) -> str:
        text = self.raw[:_EXCERPT].decode("utf-8", "backslashreplace")
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        return text + ("..." if len(self.raw) > _EXCERPT else "")


def read_lines(path: Path) -> list[Line]:
    """Every line, numbered from 1; none when the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    # Only \n ends a line (bytes.splitlines would also split at \r, \v, \f, ...,
    # and number the lines differently from `sed -n Np`).
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    return [parse_line(number, raw) for number, raw in enumerate(raw_lines, 1)]


def parse_line(number: int, raw: bytes) -> Line:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return Line(number, raw, None, f"not JSON ({e})")
    if not isinstance(doc, dict):
        return Line(number, raw, None, f"not a JSON object (a {type(doc).__name__})")
    return Line(number, raw, doc)
