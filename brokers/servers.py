"""A server as a child process: start and wait until it answers, stop, crash, supervise.

The embedded servers (``brokers/embedded.py``) are these. A server that keeps its state on
disk can be given a budget of restarts: when it dies without being asked to (a crash, an
outside SIGKILL), its supervisor starts it again on the same port, at most that many times,
logging ``server_died`` each time; a server whose state lives only in its memory must not be
(it would come back empty), so the budget is 0 unless a subclass sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from brokers.lifecycle import Service

log = structlog.get_logger(__name__)

#: Seconds between a server's death and its restart by the supervisor.
RESTART_PAUSE_S = 0.2


class ServerError(RuntimeError):
    """An embedded server could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess(Service):
    """A child process with a readiness probe, a stop protocol, a crash (:meth:`kill`) and,
    with a ``restarts`` budget, a supervisor that starts it again when it dies on its own."""

    name = "server"

    def __init__(
        self, host: str, port: int | None, startup_timeout_s: float, *, restarts: int = 0
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        #: How many more times the supervisor may restart the server after it died on its own.
        self.restarts_left = restarts
        #: How many times it did (counted once the restarted server answers).
        self.restarted = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._logdir = tempfile.TemporaryDirectory(prefix=f"worldlm-{self.name}-")
        self.log_path = Path(self._logdir.name) / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: ours)."""
        return None

    async def ready(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        if self._proc is not None:
            return
        with self.log_path.open("wb") as logfile:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                preexec_fn=_die_with_parent,
                # Its own session: a Ctrl-C in the terminal reaches the run, which then stops
                # its servers after its participants have left, not the servers at once.
                start_new_session=True,
            )
        try:
            await self._await_ready()
        except BaseException:  # a failed or cancelled start (Ctrl-C) leaves no server behind
            await asyncio.shield(self.stop())
            raise
        if self.restarts_left > 0:
            self._supervisor = asyncio.create_task(
                self._supervise(self._proc), name=f"{self.name}-supervisor"
            )
            self._supervisor.add_done_callback(self._supervisor_done)

    async def _supervise(self, proc: asyncio.subprocess.Process) -> None:
        """Start the server again if ``proc`` dies while it is still the one we run."""
        code = await proc.wait()
        if self._proc is not proc:
            return  # stopped, or killed on purpose
        self._proc = None
        if self.restarts_left <= 0:
            log.error("server_died", server=self.name, returncode=code, restarting=False)
            return
        self.restarts_left -= 1
        log.warning("server_died", server=self.name, returncode=code, restarting=True)
        await asyncio.sleep(RESTART_PAUSE_S)
        if self._proc is not None:
            return  # started again meanwhile by its owner
        await self.start()
        self.restarted += 1

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("server_restart_failed", server=self.name, error=repr(task.exception()))

    async def _stop_supervisor(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _await_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                code = self._proc.returncode
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ServerError(f"{self.name} exited with {code}: {tail}")
            if await self.ready():
                log.info("server_ready", server=self.name, port=self.port, pid=self._proc.pid)
                return
            await asyncio.sleep(0.05)
        raise ServerError(f"{self.name} not ready on port {self.port} in {self.startup_timeout_s}s")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        await self._stop_supervisor()
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("server_stopped", server=self.name, port=self.port, returncode=proc.returncode)

    async def kill(self) -> None:
        """Die as in a crash (SIGKILL: no stop protocol); :meth:`start` restarts the server on
        the same port. For crash tests and drills."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.info("server_killed", server=self.name, port=self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used (Linux ``/proc``; 0 when it is not
        running or cannot be read): benchmarks count the servers' share of a machine."""
        if self.pid is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
