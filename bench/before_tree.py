"""Build the "before" tree of bench/RESULTS.md: the current `poller/` with
issue #6's performance changes taken out, for `--compare` runs.

    .venv/bin/python -m bench.before_tree /tmp/poller-before

Later comparisons should use a commit instead:
`git archive <commit> poller | tar -x -C DIR`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

# Files whose only changes since this commit are issue #6's (and formatting).
RESTORE_FROM = "640e3f6"
RESTORED = ["poller/processing/mapping.py", "poller/sinks/coercion.py", "poller/aws.py"]
_PREPARE_AFTER = """        ops = self.mapper.ops(record)
        converters = self.converters
        if self._coerce_for is not converters or self._coerce_len != len(converters):
            # Compiled once the dialect has read the table's column types (in `open`).
            self._coerce = row_coercer(converters, self.columns)
            self._coerce_for, self._coerce_len = converters, len(converters)
        coerce = self._coerce
        key_index = self.mapper.key_index
        # The mapper's ops are new objects for this call: coerced in place.
        for op in ops:
            try:
                if op.values is None:
                    op.key = coerce_row(op.key, [converters[i] for i in key_index], self.mapper.key)
                    continue
                values = coerce(op.values)
            except CoercionError as e:
                raise MappingError(str(e)) from e
            op.values = values
            op.key = tuple([values[i] for i in key_index])
        return ops
"""
_PREPARE_BEFORE = """        ops = self.mapper.ops(record)
        out = []
        for op in ops:
            try:
                if op.values is None:
                    key_idx = self.mapper.key_index
                    out.append(
                        RowOp(
                            coerce_row(op.key, [self.converters[i] for i in key_idx], self.mapper.key),
                            None,
                        )
                    )
                    continue
                values = coerce_row(op.values, self.converters, self.columns)
            except CoercionError as e:
                raise MappingError(str(e)) from e
            out.append(RowOp(tuple(values[i] for i in self.mapper.key_index), values))
        return out
"""
# Other files: the lines issue #6 added, taken out again.
EDITS = [
    ("poller/sinks/base.py", _PREPARE_AFTER, _PREPARE_BEFORE),
    ("poller/sinks/base.py", "coerce_row, row_coercer\n", "coerce_row\n"),
    (
        "poller/sinks/base.py",
        "        self._coerce = row_coercer([], [])\n"
        "        self._coerce_for: list[Converter] | None = None\n"
        "        self._coerce_len = -1\n",
        "",
    ),
    ("poller/cli.py", "    from poller.runtime import tune_gc\n\n    tune_gc()\n", "\n"),
    ("poller/sources/sqs.py", '            fast_parse.install(client, ["ReceiveMessage"])\n', ""),
    (
        "poller/sources/kinesis.py",
        '            fast_parse.install(client, ["GetRecords"])'
        "  # botocore's parser is most of a record's CPU\n",
        "",
    ),
    ("poller/sources/kinesis.py", "fast_parse.epoch_seconds(arrival) if", "arrival.timestamp() if"),
    (
        "poller/processing/decoders.py",
        "    try:\n        value, end = _JSON_SCAN(text, 0)\n"
        "        if end == len(text):\n            return value\n"
        "    except (StopIteration, ValueError, RecursionError):\n"
        "        pass  # not a value at the start, or invalid: the full decoder below reports it\n",
        "",
    ),
    (
        "poller/processing/pipeline.py",
        "            if aging and self._too_old(record, now):",
        "            if self._too_old(record, now):",
    ),
    (
        "poller/processing/pipeline.py",
        "                children = expand(record)\n",
        "                children = self._expand(record)\n",
    ),
]


def build(dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(ROOT / "poller", dst / "poller", ignore=shutil.ignore_patterns("__pycache__"))
    for f in RESTORED:
        old = subprocess.run(
            ["git", "show", f"{RESTORE_FROM}:{f}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        (dst / f).write_text(old)
    for f, old_text, new_text in EDITS:
        path = dst / f
        text = path.read_text()
        if old_text not in text:
            raise SystemExit(f"{f}: expected text not found; this script matches issue #6's changes only")
        path.write_text(text.replace(old_text, new_text, 1))


def main() -> None:
    dst = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/poller-before")
    build(dst)
    print(f"built {dst}")


if __name__ == "__main__":
    main()
