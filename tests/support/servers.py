"""Local AWS stand-ins for integration tests and benchmarks (never used by the daemon).

``MotoServer`` runs moto's standalone server (Kinesis, DynamoDB Streams, SQS) and
``Kinesalite`` runs kinesalite (Kinesis only, but with correct resharding and iterator
expiry). Both bind 127.0.0.1 on a free port, block until the server answers HTTP,
and raise ``ServerStartError`` (never skip) when they cannot start, so a broken test
bed fails loudly in CI too.

Both are synchronous context managers; starting takes about a second, so calling them
from a session-scoped fixture (sync, or ``await asyncio.to_thread(server.start)``) is
the intended use.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "NODE_DIR",
    "Kinesalite",
    "MotoServer",
    "ServerStartError",
    "free_port",
]

#: Holds package.json for the node test dependencies; node_modules/ is installed here.
NODE_DIR = Path(__file__).resolve().parent / "node"

_HOST = "127.0.0.1"
_START_ATTEMPTS = 3  # a free port can be taken between free_port() and the bind
_LOG_TAIL_BYTES = 4000
_LOG_TAIL_LINES = 60


class ServerStartError(RuntimeError):
    """A test server could not be installed or started."""


class _ExitedEarly(ServerStartError):
    """The child died before answering (e.g. its port was taken): worth a retry."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_http(url: str, timeout: float = 1.0) -> bool:
    """True once anything at ``url`` answers with an HTTP response (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # 4xx/5xx is still a live HTTP server
    except (OSError, ValueError):
        return False


class _Subprocess:
    """A child process in its own process group, its output drained by a thread.

    A daemon thread reads the child's stdout+stderr line by line, keeps only the last
    ``_LOG_TAIL_LINES`` lines (quoted in error messages) and watches for the line that
    says the server is listening. Draining means a chatty server (moto logs every
    request) can never block on a full pipe, and keeping a tail keeps memory bounded
    during long benchmarks.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def spawn(
        self,
        argv: list[str],
        *,
        ready_marker: str,
        cwd: Path | None = None,
        stdin: int | None = None,
    ) -> None:
        self._tail.clear()
        self._ready.clear()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills the whole tree
        )
        stdout = self.proc.stdout
        assert stdout is not None
        self._reader = threading.Thread(
            target=self._drain,
            args=(stdout, ready_marker),
            name=f"{self.name}-output",
            daemon=True,
        )
        self._reader.start()

    def _drain(self, stream: IO[bytes], ready_marker: str) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us by stop()
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                self._tail.append(line)
                if ready_marker in line:
                    self._ready.set()

    def wait_until_ready(self, url: str, timeout: float) -> None:
        """Wait for the child's own "listening" line, then for ``url`` to answer HTTP.

        The marker makes sure it is *our* child that answers, not some other server
        that grabbed the port first.
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise _ExitedEarly(
                    f"{self.name} exited with code {self.proc.returncode} before answering "
                    f"{url}:\n{self.log_tail()}"
                )
            if self._ready.is_set() and _answers_http(url):
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.name} did not answer {url} within {timeout:.0f}s:\n{self.log_tail()}"
                )
            self._ready.wait(0.05)

    def log_tail(self) -> str:
        return "\n".join(list(self._tail))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after ``grace``."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=grace)
            # Children that outlived the leader (e.g. werkzeug's reloader) die too.
            self._signal_group(proc, signal.SIGKILL)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(timeout=grace)  # EOF follows the group's death
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # With start_new_session=True the child leads a group whose id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


class _ServerBase:
    """Shared lifecycle: start with a few port retries, stop, context manager."""

    _name = "server"

    def __init__(self, port: int | None, start_timeout: float) -> None:
        self._requested_port = port
        self._start_timeout = start_timeout
        self._child = _Subprocess(self._name)
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; only valid while running."""
        if self.port is None or self._child.proc is None:
            raise RuntimeError(f"{self._name} is not running")
        return f"http://{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._child.proc is not None and self._child.proc.poll() is None

    def start(self) -> Self:
        if self._child.proc is not None:
            raise RuntimeError(f"{self._name} already started")
        self._prepare()
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            self._spawn(port)
            try:
                self._child.wait_until_ready(f"http://{_HOST}:{port}/", self._start_timeout)
            except _ExitedEarly:
                self._child.stop()
                if attempt == attempts:
                    raise
            except BaseException:
                self._child.stop()
                raise
            else:
                self.port = port
                return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self._child.stop()
        self.port = None

    def _prepare(self) -> None:
        """Hook run once before the first spawn (install, locate binaries)."""

    def _spawn(self, port: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort so a forgotten server does not outlive the test run.
        with contextlib.suppress(Exception):
            self._child.stop(grace=1.0)


class MotoServer(_ServerBase):
    """moto's standalone server, ``moto_server -H 127.0.0.1 -p PORT``.

    One server holds every service; ``reset()`` wipes all of its state between tests.
    """

    _name = "moto_server"

    def __init__(self, port: int | None = None, *, start_timeout: float = 30.0) -> None:
        super().__init__(port, start_timeout)
        self._exe: Path | None = None

    def _prepare(self) -> None:
        # Not Path.resolve(): sys.executable may be a venv symlink to the system python.
        exe = Path(sys.executable).parent / "moto_server"
        if not exe.exists():
            raise ServerStartError(
                f"{exe} not found: install the dev extras into this interpreter's "
                "environment (pip install -e '.[dev]', which brings moto[server])"
            )
        self._exe = exe

    def _spawn(self, port: int) -> None:
        assert self._exe is not None
        self._child.spawn(
            [str(self._exe), "-H", _HOST, "-p", str(port)],
            ready_marker=f"Running on http://{_HOST}:{port}",  # werkzeug's banner
        )

    def reset(self) -> None:
        """Drop every stream, table and queue (``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


# A few lines of node, because kinesalite's CLI cannot bind a host. stdin is a pipe
# from the test process: when that process dies, stdin ends and node exits with it.
_KINESALITE_JS = """
const [modPath, port, opts] = process.argv.slice(1);
const server = require(modPath)(JSON.parse(opts));
server.on('error', (err) => { console.error(err); process.exit(2); });
server.listen(Number(port), '127.0.0.1', () => console.log('kinesalite listening on ' + port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
"""


class Kinesalite(_ServerBase):
    """kinesalite (in-memory) on 127.0.0.1, installed from ``tests/support/node``.

    The first start runs ``npm install`` there if ``node_modules/kinesalite`` is
    missing (a couple of seconds; no native build is needed, see package.json).
    """

    _name = "kinesalite"

    def __init__(
        self,
        port: int | None = None,
        *,
        create_stream_ms: int = 50,
        delete_stream_ms: int = 50,
        update_stream_ms: int = 50,
        shard_limit: int = 100,
        start_timeout: float = 30.0,
        install_timeout: float = 300.0,
    ) -> None:
        super().__init__(port, start_timeout)
        self.options = {
            "createStreamMs": create_stream_ms,
            "deleteStreamMs": delete_stream_ms,
            "updateStreamMs": update_stream_ms,
            "shardLimit": shard_limit,
        }
        self._install_timeout = install_timeout
        self._node: str | None = None

    def _prepare(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise ServerStartError("kinesalite needs Node.js: `node` is not on PATH")
        self._node = node
        ensure_kinesalite_installed(timeout=self._install_timeout)

    def _spawn(self, port: int) -> None:
        assert self._node is not None
        module = NODE_DIR / "node_modules" / "kinesalite"
        argv = [self._node, "-e", _KINESALITE_JS, str(module), str(port), json.dumps(self.options)]
        self._child.spawn(
            argv,
            ready_marker=f"kinesalite listening on {port}",
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
        )


def ensure_kinesalite_installed(timeout: float = 300.0) -> Path:
    """Run ``npm install`` in ``tests/support/node`` unless kinesalite is already there.

    A file lock keeps parallel test processes from installing into the same directory
    at once. Returns the package directory.
    """
    package = NODE_DIR / "node_modules" / "kinesalite"
    if (package / "package.json").is_file():
        return package
    npm = shutil.which("npm")
    if npm is None:
        raise ServerStartError(
            "kinesalite is not installed and `npm` is not on PATH: install Node.js with npm "
            f"(tested on Node 20), or run `npm install --prefix {NODE_DIR}` yourself"
        )
    lock_path = Path(tempfile.gettempdir()) / "poller-test-support-npm.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (package / "package.json").is_file():  # another process won the race
                return package
            cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)]
            try:
                done = subprocess.run(
                    cmd,
                    cwd=NODE_DIR,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ServerStartError(f"`{' '.join(cmd)}` took longer than {timeout:.0f}s") from exc
            if done.returncode != 0 or not (package / "package.json").is_file():
                output = (done.stdout + done.stderr).decode("utf-8", "replace")[-_LOG_TAIL_BYTES:]
                raise ServerStartError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{output}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return package
