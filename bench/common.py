"""What every benchmark shares: process CPU and memory from /proc, medians and
ratios, the machine description, and recording results.

Results go to `bench/results/<name>.json` and into the benchmark's own section
of `bench/RESULTS.md` (between `<!-- bench:<name> -->` markers), so running one
benchmark refreshes its figures and leaves the others alone. In smoke mode
both go to a temporary folder instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULTS_DIR = BENCH_DIR / "results"

PG_DSN = os.environ.get("POLLER_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_DSN = os.environ.get("POLLER_BENCH_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def aws_test_env() -> None:
    """Dummy credentials for the emulators; never a real profile."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a whole process (all threads), in seconds.

    From /proc/PID/stat, whose resolution is one clock tick (10 ms): measure
    intervals of seconds, not milliseconds.
    """
    if pid is None or pid == os.getpid():
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name is in parentheses and may contain spaces; fields follow it.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size now."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes(pid: int | None = None) -> int:
    """The kernel's high-water mark of the resident set (VmHWM) since the process started."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sampler:
    """Samples a process's CPU time and RSS every `interval` seconds in a thread,
    so a figure can be read over any window afterwards."""

    pid: int
    interval: float = 0.25
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (monotonic, cpu s, rss B)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        try:
            self.samples.append((time.monotonic(), cpu_seconds(self.pid), rss_bytes(self.pid)))
        except (FileNotFoundError, ProcessLookupError):
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()

    def max_rss(self) -> int:
        return max((s[2] for s in self.samples), default=0)


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median of the runs, with every run kept (rounded for reading)."""
    return {
        "median": _round(median(values)),
        "min": _round(min(values)) if values else None,
        "max": _round(max(values)) if values else None,
        "runs": [_round(v) for v in values],
    }


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """ours/theirs, as the ratio of medians and the median of run-by-run ratios
    (runs are interleaved, so run i of each side shared the machine's state)."""
    pairs = [a / b for a, b in zip(ours, theirs, strict=False) if b]
    return {
        "of_medians": _round(median(ours) / median(theirs)) if median(theirs) else None,
        "median_of_pairs": _round(median(pairs)) if pairs else None,
        "pairs": [_round(p) for p in pairs],
    }


def _round(v: float) -> float:
    if v != v:  # nan
        return v
    if abs(v) >= 100:
        return round(v, 1)
    return round(v, 4)


# --------------------------------------------------------------------------- machine


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _command_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None


def machine() -> dict[str, Any]:
    """What the figures were measured on (the CPU is shared; the load says how busy)."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": {
            p: _version(p)
            for p in (
                "aiobotocore",
                "botocore",
                "aiohttp",
                "asyncpg",
                "aiomysql",
                "PyMySQL",
                "moto",
                "async-kinesis",
            )
            if _version(p)
        },
        "node": _command_version(["node", "--version"]),
    }
    kinesalite = ROOT / "tests" / "support" / "node" / "node_modules" / "kinesalite" / "package.json"
    if kinesalite.is_file():
        info["kinesalite"] = json.loads(kinesalite.read_text()).get("version")
    return info


async def database_versions() -> dict[str, str]:
    """Server versions of the two databases (whichever answer)."""
    out: dict[str, str] = {}
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN, timeout=5)
        try:
            out["postgresql"] = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    except Exception as e:  # a benchmark of one database does not need the other
        out["postgresql"] = f"unavailable ({type(e).__name__})"
    try:
        import aiomysql

        from poller.sinks.mysql import parse_dsn

        mconn = await aiomysql.connect(**parse_dsn(MYSQL_DSN), connect_timeout=5)
        try:
            async with mconn.cursor() as cur:
                await cur.execute("SELECT VERSION()")
                row = await cur.fetchone()
                out["mysql"] = str(row[0])
        finally:
            mconn.close()
    except Exception as e:
        out["mysql"] = f"unavailable ({type(e).__name__})"
    return out


# --------------------------------------------------------------------------- recording


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes; results go to a temporary folder")
    p.add_argument("--runs", type=int, default=3, help="runs of each side (interleaved)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the results JSON and RESULTS.md (default: bench/, or a temp folder with --smoke)",
    )
    return p


def out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        return Path(args.out)
    if args.smoke:
        return Path(tempfile.mkdtemp(prefix="poller-bench-smoke-"))
    return BENCH_DIR


def command_line() -> str:
    argv = [Path(sys.executable).name if i == 0 else a for i, a in enumerate(sys.argv)]
    module = sys.modules["__main__"].__spec__
    if module is not None and module.name:
        return " ".join([".venv/bin/python", "-m", module.name, *argv[1:]])
    return " ".join([".venv/bin/python", *sys.argv])


def record(
    name: str,
    result: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
    folder: Path,
) -> Path:
    """Write `results/<name>.json` and refresh the `<name>` section of RESULTS.md
    in `folder`. Returns the JSON path."""
    result = {
        "benchmark": name,
        "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command_line(),
        **result,
    }
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    update_section(folder / "RESULTS.md", name, render(result))
    from bench import report

    report.refresh(folder)
    return path


def update_section(md: Path, name: str, body: str) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = md.read_text() if md.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md.write_text(text)


def machine_line(m: dict[str, Any]) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    dbs = ", ".join(f"{k} {v}" for k, v in m.get("databases", {}).items())
    extra = f", kinesalite {m['kinesalite']}" if "kinesalite" in m else ""
    return (
        f"{m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}, node {m.get('node')}"
        f"{extra}; {pk}; {dbs}; load average at start {m['loadavg_at_start']}"
    )


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None or value != value:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "**met**" if ok else "**not met**"


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# --------------------------------------------------------------------------- helper processes


def spawn(name: str, argv: list[str], ready_marker: str, url: str, timeout: float = 60.0) -> Any:
    """Start a helper server (stand-in, peer consumer) in its own process group,
    its output drained by a thread; returns the handle (`.proc`, `.stop()`)."""
    from tests.support.servers import _Subprocess

    child = _Subprocess(name)
    child.spawn(argv, ready_marker=ready_marker, cwd=ROOT)
    try:
        child.wait_until_ready(url, timeout)
    except BaseException:
        child.stop()
        raise
    return child


def http_json(url: str, method: str = "GET", timeout: float = 10) -> Any:
    import urllib.request

    req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Profiler:
    """py-spy sampling another process (`--profile PATH`): writes collapsed stacks
    (`--format raw`) that `python -m bench.stacks PATH` summarises."""

    def __init__(self, pid: int, path: Path | None, rate: int = 100):
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        if path is None:
            return
        exe = Path(sys.executable).parent / "py-spy"
        if not exe.exists():
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        argv = [str(exe), "record", "--nonblocking", "--format", "raw", "-r", str(rate)]
        argv += ["-p", str(pid), "-o", str(path)]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.path is not None:
            print(f"profile written to {self.path} (summary: python -m bench.stacks {self.path})")


def tree_env(tree: Path | None) -> dict[str, str]:
    """Environment that makes a daemon child import `poller` from another source
    tree (`--compare PATH`: e.g. `git archive HEAD poller | tar -x -C PATH`),
    for side-by-side before/after runs."""
    if tree is None:
        return {}
    if not (tree / "poller" / "__init__.py").is_file():
        raise SystemExit(f"--compare {tree}: no poller/ package there")
    return {"PYTHONPATH": str(tree.resolve())}


def daemon(streams: list[dict[str, Any]], tree: Path | None = None, shutdown_timeout: float = 10) -> Any:
    """`poller run` as a child process (tests/support/daemon.Daemon), importing
    `poller` from `tree` when given (`python -m` puts the working folder first
    on the import path, so the child runs there)."""
    from tests.support.daemon import Daemon

    class _Daemon(Daemon):
        def start(self) -> Daemon:
            if tree is None:
                return super().start()
            cwd = os.getcwd()
            os.chdir(tree)
            try:
                return super().start()
            finally:
                os.chdir(cwd)

    return _Daemon(streams, env=tree_env(tree), shutdown_timeout=shutdown_timeout)
