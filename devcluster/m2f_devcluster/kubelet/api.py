"""The part of the kubelet's HTTPS API a real API server calls: `/containerLogs` (what `kubectl logs` becomes).

The API server proxies pods/log to `https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>`; the dev
cluster's Nodes say 127.0.0.1 and this server's port. Like a kubelet without --kubelet-certificate-authority
on the API server's side, the serving certificate is self-signed (made once per data dir).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from m2f_devcluster.controlplane.pki import _openssl

FOLLOW_POLL_S = 0.3


def serving_context(directory: Path) -> ssl.SSLContext:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    if not cert.is_file():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "3650",
                 "-subj", "/CN=m2f-dev-kubelet", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class KubeletApi:
    """Serves logs from `<log_dir>/<namespace>/<pod>/<container>.log`; `running(namespace, pod)` says whether
    a follow should keep waiting for more."""

    def __init__(self, log_dir: Path, running: Callable[[str, str], bool], tls_dir: Path):
        self.log_dir, self.running, self.tls_dir = log_dir, running, tls_dir
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=await asyncio.to_thread(serving_context, self.tls_dir))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path = self.log_dir / namespace / pod / f"{container}.log"
        if not path.is_file():
            return web.Response(status=404, text=f'container "{container}" in pod "{pod}" is waiting to start')
        text = path.read_bytes()
        offset = len(text)
        tail = request.query.get("tailLines")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[-int(tail):]) if int(tail) else b""
        if request.query.get("follow") not in ("true", "1"):
            return web.Response(body=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(text)
        with open(path, "rb") as log:
            log.seek(offset)
            while True:
                chunk = log.read()
                if chunk:
                    await response.write(chunk)
                elif not self.running(namespace, pod):
                    break
                else:
                    await asyncio.sleep(FOLLOW_POLL_S)
        await response.write_eof()
        return response
