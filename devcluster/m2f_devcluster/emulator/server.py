"""The Kubernetes API emulator: kmock's scaffold (DSL, request log, discovery routes) over an API-server store.

Requests go through kmock first, so tests can still inject faults with its DSL
(``api['patch', kmock.resource('v1', 'pods')] << 500``); everything not intercepted falls back
to the store, which behaves like an API server. Discovery is answered in the legacy JSON format:
clients asking for aggregated discovery (kubectl 1.33) fall back to it by the content type.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from m2f_devcluster.emulator import discovery, openapi, protobuf, tables
from m2f_devcluster.emulator.errors import ApiError, not_found
from m2f_devcluster.emulator.patches import APPLY_PATCH, PATCH_TYPES
from m2f_devcluster.emulator.paths import ApiPath, parse_api_path
from m2f_devcluster.emulator.resources import ResourceType
from m2f_devcluster.emulator.selectors import SelectorError
from m2f_devcluster.emulator.store import WATCH_HISTORY, ObjectStore

SERVER_VERSION = {
    "major": "1", "minor": "33", "gitVersion": "v1.33.0-m2f-emulator", "gitCommit": "", "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
}
JSON_HEADERS = {"Content-Type": "application/json"}
REQUEST_LOG_LIMIT = 5_000  # kmock keeps every request for assertions; a dev cluster runs for hours


def _status_response(error: ApiError) -> rendering.Response:
    return rendering.Response(status=error.code, payload=error.status(), headers=JSON_HEADERS)


def _not_served() -> rendering.Response:
    return _status_response(ApiError(404, "NotFound", "the server could not find the requested resource"))


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesScaffold):
    """An in-memory Kubernetes API server. ``async with Emulator() as api:`` serves it on ``api.url``
    and writes ``api.kubeconfig``; ``api.store`` is the object store (sync, loop-confined)."""

    host: str = "127.0.0.1"
    port: int | None = None
    # Nodes that the built-in scheduler binds new pods to, round robin (none: pods stay unscheduled).
    scheduler_nodes: tuple[str, ...] = ()
    # Pod logs for `kubectl logs`: <log_dir>/<namespace>/<pod>/<container>.log (the kubelet writes them).
    log_dir: Path | None = None
    kubeconfig_path: Path | None = None
    watch_history: int = WATCH_HISTORY  # events kept for watches that resume from a resourceVersion

    store: ObjectStore = attrs.field(init=False)
    kubeconfig: Path | None = attrs.field(default=None, init=False)
    _http: kmock.Server | None = attrs.field(default=None, init=False)
    _tmpdir: tempfile.TemporaryDirectory | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.store = ObjectStore(scheduler_nodes=tuple(self.scheduler_nodes), watch_history=self.watch_history)
        # Registered before the scaffold's discovery routes, so it wins for resource paths.
        self.fallback[self._is_resource_request] << self._serve_resource
        self.fallback["get", "/openapi/v3"] << (lambda: openapi.openapi_v3_index(self.store.served_types()))
        self.fallback["get", re.compile(r"/openapi/v3/apis?/.+")] << self._serve_openapi_gv
        # Discovery, tolerant of the trailing slash the Python client adds (kmock's routes are exact).
        self.fallback["get", re.compile(r"/apis/[^/]+/[^/]+/?")] << self._serve_version
        self.fallback["get", re.compile(r"/apis/[^/]+/?")] << self._serve_group
        self.fallback["get", re.compile(r"/api/[^/]+/?")] << self._serve_version
        self.fallback["get", re.compile(r"/apis/?")] << self._serve_apis
        self.fallback["get", re.compile(r"/api/?")] << self._serve_api
        super().__attrs_post_init__()

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        await super().__aenter__()
        self._http = kmock.Server(self, host=self.host, port=self.port)
        await self._http.__aenter__()
        self.kubeconfig = write_kubeconfig(self.kubeconfig_path or self._default_kubeconfig_path(), self.base_url)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        # Open watch and log-follow streams end first: aiohttp would otherwise wait for them on shutdown.
        self._closing = True
        self.store.close_watches()
        await asyncio.sleep(0)
        try:
            if self._http is not None:
                await self._http.__aexit__(*exc_info)
                self._http = None
        finally:
            if self._tmpdir is not None:
                self._tmpdir.cleanup()
                self._tmpdir = None
            await super().__aexit__(*exc_info)

    def _default_kubeconfig_path(self) -> Path:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="m2f-emulator-")
        return Path(self._tmpdir.name) / "kubeconfig"

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")

    # -- request parsing (kmock's parser does not know every Kubernetes path shape) ---------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        text = body.decode("utf-8", errors="replace")
        content_type = raw_request.headers.get("Content-Type", "").split(";")[0].strip()
        data: Any = None
        if content_type.startswith("application/vnd.kubernetes.protobuf") or content_type == "application/cbor":
            # Typed clients (`kubectl create namespace|configmap|secret|...`) send protobuf; a few kinds
            # are decoded, the rest refused: `kubectl apply -f`, kopf and the Python client send JSON.
            try:
                data = protobuf.decode(body)
            except (protobuf.UnsupportedProtobuf, IndexError) as exc:
                error = ApiError(415, "UnsupportedMediaType", f"the emulator accepts JSON bodies (and protobuf only "
                                 f"for {', '.join(protobuf.SUPPORTED_KINDS)}): {exc}; use `kubectl apply -f`")
                return aiohttp.web.json_response(error.status(), status=415)
        elif body:
            try:
                data = yaml.safe_load(text) if content_type == APPLY_PATCH else json.loads(text)
            except (ValueError, yaml.YAMLError):
                data = None
        api_path = parse_api_path(raw_request.path)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=dict(raw_request.query), headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            body=body, text=text, data=data,
            action=_kmock_action(api_path, raw_request.method, raw_request.query),
            resource=(kmock.resource(group=api_path.group, version=api_path.version, plural=api_path.plural)
                      if api_path else None),
            namespace=api_path.namespace if api_path else None,
            name=api_path.name if api_path else None,
            subresource=api_path.subresource if api_path else None,
        )
        self._trim_request_log()
        self._requests.append(request)
        try:
            return await self._handle(request)
        except rendering.StreamingError as exc:
            # A stream that broke after its headers went out: end it; the client reconnects.
            raw_response = exc.args[0]
            if raw_response.prepared:
                return raw_response
            return await self._render_error(exc.__cause__ or exc)
        except Exception as exc:  # a fault in a user-injected reaction: answer 500 as a Status
            return await self._render_error(exc)

    def _trim_request_log(self) -> None:
        if len(self._requests) > REQUEST_LOG_LIMIT:
            del self._requests[: REQUEST_LOG_LIMIT // 2]
            for payload in self._payloads:
                if len(payload._requests) > REQUEST_LOG_LIMIT:
                    del payload._requests[: REQUEST_LOG_LIMIT // 2]

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        error = exc if isinstance(exc, ApiError) else ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, kmock.KubernetesError):
            error = ApiError(exc.status, exc.reason or "NotFound", exc.message or "not found")
        return aiohttp.web.json_response(error.status(), status=error.code)

    async def _serve_openapi_gv(self, request: rendering.Request) -> rendering.Payload:
        parts = request.url.path.split("/")[3:]  # ["api", "v1"] or ["apis", group, version]
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2] if len(parts) > 2 else "")
        document = openapi.gv_document(self.store.served_types(), group, version)
        return document if document is not None else _not_served()

    # -- discovery (legacy format; kmock's versions assume a non-core group) ----------------------

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return dict(SERVER_VERSION)

    async def _serve_api(self, request: rendering.Request) -> rendering.Payload:
        return discovery.api_versions(self.host)

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        return discovery.group_list(self.store.served_types())

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource else ""
        return discovery.api_group(self.store.served_types(), group or "") or _not_served()

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource else ""
        version = request.resource.version if request.resource else ""
        return discovery.resource_list(self.store.served_types(), group or "", version or "") or _not_served()

    # -- resources --------------------------------------------------------------------------------

    @staticmethod
    def _is_resource_request(request: rendering.Request) -> bool:
        return request.resource is not None and bool(request.resource.plural)

    async def _serve_resource(self, request: rendering.Request) -> rendering.Payload:
        api_path = parse_api_path(request.url.path)
        assert api_path is not None and api_path.plural is not None  # ensured by _is_resource_request
        try:
            rtype = self.store.find_type(api_path.group, api_path.version, api_path.plural)
            if rtype is None or (api_path.namespace is not None and not rtype.namespaced):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return await self._dispatch(request, api_path, rtype)
        except SelectorError as exc:
            return _status_response(ApiError(400, "BadRequest", str(exc)))
        except ApiError as exc:
            return _status_response(exc)

    async def _dispatch(self, request: rendering.Request, path: ApiPath, rtype: ResourceType) -> rendering.Payload:
        method, params = request.method.value.upper(), request.params
        dry_run = params.get("dryRun") == "All"
        namespace = path.namespace if rtype.namespaced else None
        store = self.store
        if method == "GET" and (path.legacy_watch or params.get("watch") in ("true", "1")):
            field_selector = params.get("fieldSelector") or ""
            if path.name:  # watching one object by URL is watching by its name
                field_selector = ",".join(filter(None, [field_selector, f"metadata.name={path.name}"]))
            return self._watch(request, rtype, namespace, field_selector)
        if method == "GET" and path.name is None:
            items, revision = store.list(rtype, namespace, params.get("labelSelector"), params.get("fieldSelector"))
            if tables.wants_table(request.headers):
                return self._json(tables.table(rtype, items, revision))
            return self._json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                               "metadata": {"resourceVersion": revision}, "items": items})
        if method == "GET" and path.subresource == "log":
            return self._pod_log(rtype, namespace, path.name, params)
        if method == "GET":
            obj = store.get(rtype, namespace, path.name)
            if path.subresource not in (None, "status") or (path.subresource == "status" and not rtype.has_status):
                raise not_found(rtype, path.name)
            if tables.wants_table(request.headers):
                return self._json(tables.table(rtype, [obj], obj["metadata"]["resourceVersion"]))
            return self._json(obj)
        if method == "POST" and path.name is None:
            return self._json(store.create(rtype, namespace, request.data, dry_run=dry_run), status=201)
        if method == "POST" and path.subresource in ("binding", "eviction") and rtype.plural == "pods":
            return self._json(self._pod_action(namespace, path.name, path.subresource, request.data), status=201)
        if method == "PUT" and path.name is not None:
            return self._json(store.update(rtype, namespace, path.name, request.data, path.subresource, dry_run))
        if method == "PATCH" and path.name is not None:
            return self._json(self._patch(request, rtype, namespace, path, dry_run))
        if method == "DELETE" and path.name is not None:
            return self._json(store.delete(rtype, namespace, path.name, self._delete_options(request), dry_run))
        if method == "DELETE":
            items, revision = store.list(rtype, namespace, params.get("labelSelector"), params.get("fieldSelector"))
            deleted = [store.delete(rtype, namespace, obj["metadata"]["name"], self._delete_options(request), dry_run)
                       for obj in items]
            return self._json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                               "metadata": {"resourceVersion": str(store.revision)}, "items": deleted})
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @staticmethod
    def _json(payload: dict, status: int = 200) -> rendering.Response:
        return rendering.Response(status=status, payload=payload, headers=JSON_HEADERS)

    def _patch(self, request: rendering.Request, rtype: ResourceType, namespace: str | None, path: ApiPath,
               dry_run: bool) -> dict:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                       f"accepted media types include: {', '.join(PATCH_TYPES)}")
        if request.data is None:
            raise ApiError(400, "BadRequest", "the patch body is not valid JSON / YAML")
        if content_type == APPLY_PATCH and path.subresource is None:
            try:
                self.store.get(rtype, namespace, path.name)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                return self.store.create(rtype, namespace, request.data, dry_run=dry_run)
        return self.store.patch(rtype, namespace, path.name, request.data, content_type, path.subresource, dry_run)

    @staticmethod
    def _delete_options(request: rendering.Request) -> dict:
        options = dict(request.data) if isinstance(request.data, dict) else {}
        for key in ("gracePeriodSeconds", "propagationPolicy"):
            if key in request.params:
                options[key] = request.params[key]
        if options.get("gracePeriodSeconds") is not None:
            try:
                options["gracePeriodSeconds"] = int(options["gracePeriodSeconds"])
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "BadRequest", "gracePeriodSeconds must be an integer") from exc
        if options.get("orphanDependents") is True:
            options.setdefault("propagationPolicy", "Orphan")
        return options

    def _pod_action(self, namespace: str | None, name: str, action: str, body: Any) -> dict:
        pod_type = self.store.find_type("", "v1", "pods")
        assert pod_type is not None
        pod = self.store.get(pod_type, namespace, name)
        if action == "eviction":
            self.store.delete(pod_type, namespace, name, (body or {}).get("deleteOptions") or {})
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
        target = ((body or {}).get("target") or {}).get("name")
        if not target:
            raise ApiError(422, "Invalid", "Binding.target.name: Required value")
        if pod["spec"].get("nodeName"):
            raise ApiError(409, "Conflict", f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"')
        bound = dict(pod, spec=dict(pod["spec"], nodeName=target))
        conditions = [c for c in pod.get("status", {}).get("conditions", []) if c.get("type") != "PodScheduled"]
        bound["status"] = dict(pod.get("status", {}), conditions=[*conditions, {"type": "PodScheduled", "status": "True"}])
        self.store.bind_pod(namespace or "", name, bound)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _pod_log(self, rtype: ResourceType, namespace: str | None, name: str, params: dict) -> rendering.Response:
        pod = self.store.get(rtype, namespace, name)
        spec = pod.get("spec", {})
        containers = [c["name"] for c in spec.get("containers", [])]
        valid = containers + [c["name"] for c in spec.get("initContainers", [])]
        container = params.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                              f"choose one of: {containers}")
        if container not in valid:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        path = (self.log_dir / (namespace or "") / name / f"{container}.log") if self.log_dir else None
        if path is None or not path.is_file():
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start')
        text = path.read_bytes()
        offset = len(text)  # a follow continues exactly where this read ended
        if params.get("tailLines"):
            if not params["tailLines"].isdigit():
                raise ApiError(400, "BadRequest", f"tailLines must be a non-negative integer, not {params['tailLines']!r}")
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[len(lines) - int(params["tailLines"]):]) if int(params["tailLines"]) else b""
        if params.get("follow") not in ("true", "1"):
            return rendering.Response(status=200, payload=text, headers={"Content-Type": "text/plain"})
        return rendering.Response(status=200, payload=self._follow_log(rtype, namespace, name, path, text, offset),
                                  headers={"Content-Type": "text/plain"})

    async def _follow_log(self, rtype: ResourceType, namespace: str | None, name: str, path: Path,
                          head: bytes, offset: int) -> AsyncIterator[bytes]:
        """`kubectl logs -f`: the file so far, then what is appended until the pod finishes or goes."""
        yield head or b""
        with open(path, "rb") as log:
            log.seek(offset)
            while True:
                chunk = log.read()
                if chunk:
                    yield chunk
                    continue
                try:
                    phase = (self.store.get(rtype, namespace, name).get("status") or {}).get("phase")
                except ApiError:
                    return
                if phase in ("Succeeded", "Failed") or self._closing:
                    rest = log.read()
                    if rest:
                        yield rest
                    return
                await asyncio.sleep(0.3)

    def _watch(self, request: rendering.Request, rtype: ResourceType, namespace: str | None,
               field_selector: str) -> rendering.Response:
        params = request.params
        try:
            watcher = self.store.watch(rtype, namespace, params.get("resourceVersion"),
                                       params.get("labelSelector"), field_selector,
                                       initial_events_bookmark=params.get("sendInitialEvents") == "true")
        except ApiError as exc:
            if exc.code != 410:
                raise
            # As the API server does: a 200 stream whose only event is the 410 Expired Status.
            return rendering.Response(status=200, payload=iter([{"type": "ERROR", "object": exc.status()}]),
                                      headers=JSON_HEADERS)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        as_table = tables.wants_table(request.headers)

        async def events() -> AsyncIterator[bytes | dict]:
            try:
                yield b""  # sends the headers now: clients wait for them before reading events
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout if timeout else None
                while True:
                    remaining = deadline - loop.time() if deadline is not None else None
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(watcher.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        return
                    if event is None:
                        return
                    if as_table:
                        event = dict(event, object=tables.table(rtype, [event["object"]], None))
                    yield event
            finally:
                self.store.unwatch(watcher)

        return rendering.Response(status=200, payload=events(), headers=JSON_HEADERS)


def _kmock_action(path: ApiPath | None, method: str, query: Any) -> kmock.action | None:
    if path is None or path.plural is None:
        return None
    method = method.upper()
    if method == "GET" and (path.legacy_watch or query.get("watch") in ("true", "1")):
        return kmock.action.WATCH
    if path.name is None:
        return {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
    return {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE, "PUT": kmock.action.UPDATE,
            "DELETE": kmock.action.DELETE}.get(method)


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default", context: str = "m2f-dev") -> Path:
    """A kubeconfig for the emulator (plain HTTP on localhost, no credentials), written atomically."""
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": context, "cluster": {"server": server_url}}],
        "users": [{"name": context, "user": {}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        "current-context": context,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path
