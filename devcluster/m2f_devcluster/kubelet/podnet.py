"""The dev cluster's pod network: an HTTP forward proxy on 127.0.0.1 that reaches `http://<pod IP>:<port>`.

Pod IPs are labels in the API (addresses.py) and each pod's processes listen on loopback ports the kubelet
remapped (two gangs cannot both own 9091 on one machine). A client given this proxy (standard HTTP_PROXY, as
the dev cluster starts the operator) asks for the pod's address and declared port, as it would in a real
cluster, and the proxy connects to the loopback port that pod's process listens on. Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], "int | None"]  # (pod IP, declared port) -> local port, None: no such pod


class PodNetworkProxy:
    def __init__(self, resolve: Resolve):
        self.resolve = resolve
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._forward(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("pod network proxy: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, version = (await reader.readline()).decode("latin-1").split()
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            return await _reply(writer, 400, f"only absolute http:// requests are proxied, not {target}")
        local = self.resolve(url.hostname, url.port or 80)
        if local is None:
            return await _reply(writer, 502, f"no running pod has the address {url.hostname}")
        headers = []
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            if not line.lower().startswith((b"proxy-", b"connection:")):
                headers.append(line)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", local)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        upstream_writer.write(f"{method} {path} {version}\r\n".encode("latin-1") + b"".join(headers)
                              + b"Connection: close\r\n\r\n")
        await upstream_writer.drain()
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        with contextlib.suppress(Exception):
            sink.write_eof()


async def _reply(writer: asyncio.StreamWriter, code: int, message: str) -> None:
    body = message.encode()
    writer.write(f"HTTP/1.1 {code} {'Bad Request' if code == 400 else 'Bad Gateway'}\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
