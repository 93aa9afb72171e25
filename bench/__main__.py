"""Run every benchmark in turn with its default sizes (about 15 minutes on two
cores), or `--smoke` for tiny sizes; each one refreshes its own section of
bench/RESULTS.md and the summary table.

    .venv/bin/python -m bench [--smoke] [--only sinks,sqs,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

ORDER = ["sinks", "sqs", "kinesis_e2e", "latency", "memory", "idle", "snapshot", "replicas", "containment"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--only", default=",".join(ORDER))
    a = p.parse_args()
    failed = []
    for name in [n for n in a.only.split(",") if n]:
        argv = [sys.executable, "-m", f"bench.{name}"] + (["--smoke"] if a.smoke else [])
        print(f"== {' '.join(argv[1:])}", flush=True)
        if subprocess.run(argv, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
