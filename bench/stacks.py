"""Summarise py-spy collapsed stacks (`--format raw`): self and inclusive share per frame.

.venv/bin/python -m bench.stacks PROFILE.raw [--top 40] [--match poller/]
"""

from __future__ import annotations

import argparse
import collections
import re

_PREFIX = re.compile(r" \((?:\S*/site-packages/|\S*/lib/python3\.\d+/|\S*/main/)")


def summarise(path: str, top: int = 40, match: str = "") -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [_PREFIX.sub(" (", fr) for fr in stack.split(";")]
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", incl)):
        out.append(f"--- {title}")
        rows = [(f, n) for f, n in counter.most_common() if match in f][:top]
        out += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in rows]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--match", default="", help="only frames containing this text")
    a = p.parse_args()
    print(summarise(a.path, a.top, a.match))


if __name__ == "__main__":
    main()
