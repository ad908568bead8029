"""A round-robin HTTP proxy in front of Courier nodes, as a load balancer without sticky sessions.

Each request, whatever session it belongs to, goes to the next node in turn over a connection of
its own (marked `Connection: close`, so a node never closes under a request it would reuse); the
node's answer is copied back and the client's connection is closed after it. A WebSocket upgrade
is sent on unchanged, and then bytes are copied both ways until either side closes. A node that
refuses the connection is skipped for the next one.

It runs on an asyncio loop in a thread of its own, listening on 127.0.0.1 port 0. `log` holds one
entry per request: (method, sid, transport, target URL, status) where the status is read from the
node's answer (None if it gave none), and whether the exchange is over.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs, urlsplit

# Headers of one hop (RFC 9110, section 7.6.1), not sent on; `Connection: close` replaces them.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization"}
STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")
MAX_HEAD = 64 * 1024


@dataclass
class Entry:
    method: str
    sid: Optional[str]
    transport: Optional[str]
    target: Optional[str]
    status: Optional[int] = None
    done: bool = False  # the exchange is over (the answer copied, or the connection lost)


class RoundRobinProxy:
    """`targets()` returns the node URLs (read at each request)."""

    def __init__(self, targets):
        self.targets = targets
        self.log: list[Entry] = []
        self.refused: dict[str, int] = {}
        self._turn = 0
        self._writers = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _listen(self):
        return await asyncio.start_server(self._client, "127.0.0.1", 0)

    def targets_of(self, sid, transport=None):
        """The node URLs that answered requests of Engine.IO session `sid`."""
        return {e.target for e in list(self.log)
                if e.sid == sid and e.target and (transport is None or e.transport == transport)}

    def close(self):
        async def shut():
            self._server.close()
            for w in list(self._writers):
                w.close()
            # every exchange still going ends here, before the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # ------------------------------------------------------------------ one client connection

    async def _client(self, reader, writer):
        self._writers.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            if len(head) > MAX_HEAD:
                return
            request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
            upgrade = any(k.lower() == "upgrade" and v.lower() == "websocket" for k, v in headers)
            query = parse_qs(urlsplit(target).query)
            entry = Entry(method, query.get("sid", [None])[0], query.get("transport", [None])[0], None)
            self.log.append(entry)
            try:
                await self._forward(reader, writer, entry, head, request_line, headers, upgrade)
            finally:
                entry.done = True
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _forward(self, reader, writer, entry, head, request_line, headers, upgrade):
        """Sends the request on to a node and copies its answer (or the WebSocket) back."""
        upstream = await self._connect(entry)
        if upstream is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            entry.status = 502
            await writer.drain()
            return
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        host = urlsplit(entry.target).netloc
        if upgrade:
            out = head
        else:
            kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "host"]
            lines = [request_line, f"Host: {host}", *(f"{k}: {v}" for k, v in kept), "Connection: close"]
            out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        up_writer.write(out)
        await up_writer.drain()
        await self._pipe_both(reader, writer, up_reader, up_writer, entry)

    async def _connect(self, entry):
        """Connects to the next node in turn, or the ones after it if it refuses."""
        nodes = list(self.targets())
        start = self._turn % len(nodes)
        self._turn += 1
        for i in range(len(nodes)):
            url = nodes[(start + i) % len(nodes)]
            parts = urlsplit(url)
            try:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, parts.port), timeout=5)
            except (ConnectionRefusedError, asyncio.TimeoutError, OSError):
                self.refused[url] = self.refused.get(url, 0) + 1
                continue
            entry.target = url
            return connection
        return None

    async def _pipe_both(self, reader, writer, up_reader, up_writer, entry):
        async def copy(src, dst, first=None):
            try:
                while True:
                    chunk = await src.read(65536)
                    if not chunk:
                        break
                    if first is not None:
                        first(chunk)
                        first = None
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass

        def status(chunk):
            m = STATUS.match(chunk)
            entry.status = int(m.group(1)) if m else None

        to_node = asyncio.ensure_future(copy(reader, up_writer))
        to_client = asyncio.ensure_future(copy(up_reader, writer, status))
        try:
            # The node closes after its answer (or the WebSocket ends); a client that leaves first
            # takes the node's connection with it.
            await asyncio.wait([to_node, to_client], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_node, to_client):
                task.cancel()
            up_writer.close()
            self._writers.discard(up_writer)
