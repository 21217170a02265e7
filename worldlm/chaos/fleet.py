"""The campaign's process shell: participants as real ``worldlm`` processes, killed and restarted.

A :class:`Fleet` runs chosen participants of a trial's config as ``worldlm aggregator`` and
``worldlm client`` processes against given servers, each with its own JSON log; it can
SIGKILL one and start it again (an aggregator resumes from its checkpoint directory), and
always leaves no process behind. :class:`Members` runs clients as tasks of the campaign's own
process instead, for scenarios whose faults are elsewhere (cheaper than a process each).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from brokers.embedded import Servers
from worldlm.chaos.configs import TrialConfig
from worldlm.chaos.trials import ParticipantExited, Stage
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import Endpoints

#: How long a process gets to exit after SIGTERM before it is killed, when a trial ends.
TERM_GRACE_S = 5.0

T = TypeVar("T")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A participant outlives no campaign, even a SIGKILLed one (Linux; elsewhere, no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worldlm_command() -> list[str]:
    """The ``worldlm`` console script of this environment (or the module, if there is none)."""
    script = Path(sys.executable).with_name("worldlm")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from worldlm.cli import main; main()"]


@dataclass
class Process:
    """One participant process; ``generation`` counts its starts."""

    role: str
    node: str
    args: list[str]
    logs: Path
    generation: int = 0
    proc: asyncio.subprocess.Process | None = None
    exits: list[int] = field(default_factory=list)  # return codes of earlier generations

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.node}.{self.generation}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def start(self) -> None:
        self.generation += 1
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *worldlm_command(),
                *self.args,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )

    async def kill(self) -> int | None:
        """SIGKILL (no clean leave, no last checkpoint); its return code once reaped."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        self.exits.append(code)
        return code

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def wait(self) -> int:
        assert self.proc is not None, "start() first"
        return await self.proc.wait()

    async def close(self) -> None:
        """SIGTERM, then SIGKILL after ``TERM_GRACE_S``: what a trial's end does to a survivor."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), TERM_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines the current generation wrote that are not JSON log entries."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if not line.startswith("{")][-lines:]


class Fleet:
    """Participants of one trial as processes; an async context manager that reaps them all.

    Args:
        config: the trial's config (its TOML is what the processes load).
        servers: where Kafka and Redis are.
        workdir: logs go to ``workdir/logs``, aggregator checkpoints to ``workdir/checkpoints``.
    """

    def __init__(self, config: TrialConfig, servers: Servers, workdir: Path) -> None:
        self.config = config
        self.servers = servers
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.checkpoints = workdir / "checkpoints"
        self.processes: dict[str, Process] = {}

    def _args(self, role: str, node: str) -> list[str]:
        args = [role, "--config", str(self.config.path), "--node", node]
        args += ["--kafka", self.servers.kafka, "--redis", self.servers.redis]
        args += ["--run-id", self.config.run_id, "--log-level", "info"]
        if role == "aggregator":
            args += ["--checkpoint-dir", str(self.checkpoints)]
        return args

    async def start(
        self, *, aggregators: Iterable[str] = (), clients: Iterable[str] = ()
    ) -> list[Process]:
        started = []
        for role, nodes in (("aggregator", aggregators), ("client", clients)):
            for node in nodes:
                p = Process(role, node, self._args(role, node), self.logs)
                self.processes[node] = p
                await p.start()
                started.append(p)
        return started

    async def start_all(self) -> None:
        """Every aggregator (leaves first) and every client of the config."""
        h = self.config.hierarchy
        feds = [f.id for f in h.walk()]
        await self.start(aggregators=reversed(feds), clients=sorted(h.clients))

    def __getitem__(self, node: str) -> Process:
        return self.processes[node]

    async def wait_all(self) -> dict[str, int]:
        """Every process's return code, once each has exited (bound it with a timeout)."""
        codes = await asyncio.gather(*(p.wait() for p in self.processes.values()))
        return dict(zip(self.processes, codes, strict=True))

    async def alongside(self, waiting: Awaitable[T]) -> T:
        """``waiting``'s result, or :class:`ParticipantExited` as soon as a process of the
        fleet ends first (a crash while the trial waits on the run is its verdict, at once)."""
        wanted = asyncio.ensure_future(waiting)
        ends = {
            asyncio.ensure_future(p.proc.wait()): p
            for p in self.processes.values()
            if p.proc is not None and p.running
        }
        try:
            done, _ = await asyncio.wait({wanted, *ends}, return_when=asyncio.FIRST_COMPLETED)
            if wanted in done:
                return wanted.result()
            p = next(proc for end, proc in ends.items() if end in done)
            tail = " | ".join(p.log_tail(3))
            raise ParticipantExited(f"{p.node} exited with {p.returncode}: {tail}")
        finally:
            for future in (wanted, *ends):
                future.cancel()

    async def bounce(self, node: str, pause_s: float, stage: Stage) -> bool:
        """SIGKILL ``node`` and start it again ``pause_s`` later; whether it was running."""
        was_running = self[node].running
        await self[node].kill()
        await asyncio.sleep(pause_s)
        stage(f"restarting {node}")
        await self[node].start()
        return was_running

    async def finish(self, members: Members, stage: Stage) -> dict[str, int]:
        """Every process's exit code, once each exited; then, if all exited cleanly, the
        clients' last round."""
        stage("waiting for every aggregator process to exit")
        exits = await self.wait_all()
        if all(code == 0 for code in exits.values()):
            stage("waiting for the clients' last round")
            await members.wait()
        return exits

    def codes(self) -> dict[str, int | None]:
        return {n: p.returncode for n, p in self.processes.items()}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.processes.values()))

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())


class Members:
    """Clients of a trial as tasks of this process (their failures are kept, not raised)."""

    def __init__(self, config: TrialConfig, servers: Servers, clients: Iterable[str]) -> None:
        endpoints = Endpoints(servers.kafka, servers.redis)
        self.clients = [ClientParticipant(config.hierarchy, endpoints, c) for c in clients]
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(c.run(), name=c.node.id) for c in self.clients]

    async def wait(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def errors(self) -> dict[str, str]:
        """Clients whose task raised, with the error."""
        return {
            t.get_name(): repr(t.exception())
            for t in self.tasks
            if t.done() and not t.cancelled() and t.exception() is not None
        }

    async def close(self) -> None:
        for c in self.clients:
            c.stop.set()
        try:
            async with asyncio.timeout(TERM_GRACE_S * 2):
                await self.wait()
        except TimeoutError:
            for t in self.tasks:
                t.cancel()
            await self.wait()

    async def __aenter__(self) -> Members:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())
