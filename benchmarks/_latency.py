"""A TCP proxy that delays every chunk it forwards: a client far from its cluster, on one machine.

``DelayProxy(host, port, delay_s)`` listens on 127.0.0.1 (a free port) and forwards each
connection to ``host:port``, delivering every chunk ``delay_s`` seconds after it arrived, in
order (a one-way latency; the round trip costs twice that). Connect a Client to
``proxy.address`` instead of the scheduler's: only the client's messages are delayed, the
workers still talk to the scheduler and to each other directly, as a laptop or notebook does
with a cluster in a data centre.
"""

from __future__ import annotations

import asyncio
import threading
import time


class DelayProxy:
    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.target = (host, port)
        self.delay = delay_s
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(asyncio.start_server(self._connect, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, name="delay-proxy", daemon=True).start()
        ready.wait()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(
            self._forward(reader, upstream_writer), self._forward(upstream_reader, writer), return_exceptions=True
        )

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    writer.close()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(1 << 20):
                queue.put_nowait((time.monotonic() + self.delay, data))
        finally:
            queue.put_nowait((0.0, None))
            await sender
