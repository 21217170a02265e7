"""A TCP proxy that delays every byte by a fixed one-way latency, each way.

Latency for benchmarks/shaped_links.py, where ``netem`` is not available: bytes read from one
side are written to the other ``--delay-ms`` later, in order, so a request-response turn
costs two delays, as on a long link (bandwidth stays the kernel's ``tbf``). Connections from
``--local`` addresses (participants beside the broker) are passed through undelayed.

    python benchmarks/delay_proxy.py --listen 10.22.0.1:19092 --to 127.0.0.1:29092 \
        --delay-ms 50 [--local 10.22.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(1 << 16):
            queue.put_nowait((time.monotonic() + delay, data))
        queue.put_nowait((0.0, b""))
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: str, to: str, delay: float, local: set[str]) -> None:
    host, port = listen.rsplit(":", 1)
    to_host, to_port = to.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        d = 0.0 if peer in local else delay
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            pump(reader, up_writer, d), pump(up_reader, writer, d), return_exceptions=True
        )

    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        print(f"delaying {listen} -> {to} by {delay * 1000:.0f} ms", flush=True)
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--local", action="append", default=[])
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000, set(args.local)))


if __name__ == "__main__":
    main()
