"""A fake Kubernetes API server: the subset the `kubernetes` provider uses, served faithfully.

No kube-apiserver can run on these machines, so this aiohttp app keeps objects in memory
and answers as the real one does for:

* GET one object, LIST (namespaced or across namespaces) with `labelSelector`
  (equality `k=v`/`k==v`, `k!=v`, set-based `k in (a,b)`, `k notin (a,b)`, `k`, `!k`);
* WATCH (`?watch=true&resourceVersion=N`): JSON lines ADDED/MODIFIED/DELETED, from the
  events after N, then live; BOOKMARK at the end of `timeoutSeconds` when
  `allowWatchBookmarks`; a resourceVersion older than the retained history gets the
  ERROR event with a `410 Gone` Status (or HTTP 410, `http_410 = True`); `expire()`
  sends that ERROR to every open watch and forgets the history;
* one resourceVersion counter for everything (as etcd's revision): it grows with every
  change and a LIST carries the current one;
* server-side apply (`PATCH`, `application/apply-patch+yaml`, `fieldManager` required):
  creates, or merges the manager's applied fields into the object, drops the fields
  it applied before and no longer does, answers 409 on a field another manager owns
  with a different value unless `force=true`; a no-op apply changes nothing (same
  resourceVersion); `generation` grows when `spec` changes. Lists are atomic (not
  merged by key as the real one merges containers by name);
* `application/merge-patch+json` PATCH (RFC 7386) on objects and on a Deployment's
  `scale` subresource (GET/PATCH, an `autoscaling/v1` Scale);
* DELETE: a scheduled pod gets `deletionTimestamp` and is removed once the fake kubelet
  (tests/control/fake_cluster.py) has stopped it; everything else goes at once, and a
  Namespace takes its objects with it.

`stop_serving()`/`start_serving()` take the server off its port and back (open watches
end), for API-server-down scripts.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import yaml
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = {
    r.plural: r
    for r in (
        Resource("", "v1", "pods", "Pod"),
        Resource("", "v1", "services", "Service"),
        Resource("", "v1", "namespaces", "Namespace", namespaced=False),
        Resource("apps", "v1", "deployments", "Deployment"),
        Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"),
    )
}
Key = tuple[str, str, str]  # (plural, namespace, name)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# label selectors


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        if self.op == "=":
            return has and v == self.values[0]
        if self.op == "!=":
            return not has or v != self.values[0]
        if self.op == "in":
            return has and v in self.values
        if self.op == "notin":
            return not has or v not in self.values
        if self.op == "exists":
            return has
        return not has


_SET_RE = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_RE = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$")
_KEY_RE = re.compile(r"^(!?)([\w./-]+)$")


def parse_selector(text: str) -> list[Requirement]:
    """A label selector as the API server reads it; ValueError if it is malformed."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur or parts:
        parts.append(cur)
    out = []
    for raw in parts:
        p = raw.strip()
        if not p:
            raise ValueError(f"empty requirement in {text!r}")
        if m := _SET_RE.match(p):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            out.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(p):
            op = "!=" if m.group(2) == "!=" else "="
            out.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _KEY_RE.match(p):
            out.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise ValueError(f"unable to parse requirement {p!r}")
    return out


def selected(obj: dict[str, Any], reqs: list[Requirement]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# server-side apply's field sets: leaf paths of a config


Path = tuple[str, ...]


def leaves(doc: Any, prefix: Path = ()) -> dict[Path, Any]:
    if isinstance(doc, dict) and doc:
        out: dict[Path, Any] = {}
        for k, v in doc.items():
            out.update(leaves(v, (*prefix, str(k))))
        return out
    return {prefix: doc}


def get_path(doc: Any, path: Path) -> Any:
    for k in path:
        if not isinstance(doc, dict) or k not in doc:
            return _MISSING
        doc = doc[k]
    return doc


def drop_path(doc: dict[str, Any], path: Path) -> None:
    parents = []
    cur: Any = doc
    for k in path[:-1]:
        if not isinstance(cur, dict) or k not in cur:
            return
        parents.append((cur, k))
        cur = cur[k]
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    for parent, k in reversed(parents):  # empty maps left behind go too
        if parent[k] == {}:
            del parent[k]


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class _Missing:
    pass


_MISSING = _Missing()
_SERVER_FIELDS = {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return status_doc(self.code, self.reason, self.message)


def status_doc(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(slots=True, eq=False)
class _Watch:
    plural: str
    namespace: str  # "" = all
    selector: list[Requirement]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


class FakeKube:
    """The store and the app; `url` once serving (see the module docstring)."""

    def __init__(self, *, history: int = 10_000) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.applied: dict[Key, dict[str, dict[str, Any]]] = {}  # manager -> its config
        self.owners: dict[Key, dict[Path, str]] = {}  # leaf path -> manager
        self.rv = 0
        self.compacted = 0  # events at or before this rv are forgotten
        self.events: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.watches: set[_Watch] = set()
        self.http_410 = False  # answer a too-old watch with HTTP 410 instead of an event
        self.changed = asyncio.Event()  # set on every change (the fake controllers wait)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        # awaited before each request is served (method, path): a test holds one there
        self.gate: Callable[[str, str], Awaitable[None]] | None = None
        self.app = self._make_app()
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # serving

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        await self.start_serving()

    async def start_serving(self) -> None:
        assert self.runner is not None
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self.site.start()
        if not self.port:
            server = self.site._server
            assert server is not None
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop_serving(self) -> None:
        """Off the port: new connections are refused, open watches end."""
        for w in list(self.watches):
            w.queue.put_nowait(None)
        if self.site is not None:
            await self.site.stop()
            self.site = None
        server = self.runner.server if self.runner is not None else None
        for conn in list(server.connections if server is not None else ()):
            conn.force_close()  # kept-alive connections die with a server that goes away

    async def close(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait(None)
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def expire(self) -> None:
        """Every open watch gets `410 Gone` and the history goes (a compaction)."""
        self.compacted = self.rv
        self.events.clear()
        gone = status_doc(410, "Expired", "too old resource version")
        for w in list(self.watches):
            w.queue.put_nowait({"type": "ERROR", "object": gone})

    # the store (the fake controllers use these directly, as controllers use the API)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def list(self, plural: str, namespace: str = "", selector: str = "") -> list[dict[str, Any]]:
        reqs = parse_selector(selector) if selector else []
        return [
            o
            for (p, ns, _), o in sorted(self.objects.items())
            if p == plural and (not namespace or ns == namespace) and selected(o, reqs)
        ]

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (a controller's write): new resourceVersion, an event."""
        res = RESOURCES[plural]
        meta = obj.setdefault("metadata", {})
        key = (plural, meta.get("namespace", "") if res.namespaced else "", meta["name"])
        old = self.objects.get(key)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
            meta.setdefault("generation", 1)
        else:
            for f in ("uid", "creationTimestamp"):
                meta[f] = old["metadata"][f]
            gen = old["metadata"].get("generation", 1)
            meta["generation"] = gen + 1 if obj.get("spec") != old.get("spec") else gen
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = obj
        self._emit("ADDED" if old is None else "MODIFIED", plural, obj)
        return obj

    def remove(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (plural, namespace, name)
        obj = self.objects.pop(key, None)
        self.applied.pop(key, None)
        self.owners.pop(key, None)
        if obj is None:
            return None
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit("DELETED", plural, obj)
        return obj

    def _emit(self, kind: str, plural: str, obj: dict[str, Any]) -> None:
        snap = copy.deepcopy(obj)
        ns = (snap.get("metadata") or {}).get("namespace", "")
        self.events.append((self.rv, plural, ns, {"type": kind, "object": snap}))
        for w in list(self.watches):
            if w.plural == plural and (not w.namespace or w.namespace == ns):
                if selected(snap, w.selector):
                    w.queue.put_nowait({"type": kind, "object": snap})
        self.changed.set()

    # the HTTP API

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        core = "/api/{version}"
        grp = "/apis/{group}/{version}"
        for prefix in (core, grp):
            app.router.add_get(prefix + "/{plural}", self._collection)
            app.router.add_route("*", prefix + "/{plural}/{name}", self._cluster_object)
            app.router.add_get(prefix + "/namespaces/{ns}/{plural}", self._collection)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}/{name}", self._object)
            app.router.add_route(
                "*", prefix + "/namespaces/{ns}/{plural}/{name}/{sub}", self._subresource
            )
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            (request.method, request.path, request.headers.get("Content-Type", ""))
        )
        if self.gate is not None:
            await self.gate(request.method, request.path)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except ApiError as exc:
            return _json(exc.status(), exc.code)

    def _resource(self, request: web.Request) -> Resource:
        info = request.match_info
        res = RESOURCES.get(info["plural"])
        group = info.get("group", "")
        if res is None or res.group != group or res.version != info["version"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return res

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        ns = request.match_info.get("ns", "")
        q = request.query
        try:
            reqs = parse_selector(q.get("labelSelector", ""))
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {exc}") from None
        if q.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, res, ns, reqs)
        items = []
        for o in self.list(res.plural, ns):
            if selected(o, reqs):
                item = copy.deepcopy(o)
                item.pop("apiVersion", None), item.pop("kind", None)  # as lists serve them
                items.append(item)
        return _json(
            {
                "apiVersion": res.api_version,
                "kind": f"{res.kind}List",
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, res: Resource, ns: str, reqs: list[Requirement]
    ) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        timeout = float(q.get("timeoutSeconds", "1800"))
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        start = int(rv_text) if rv_text.isdigit() else 0
        too_old = bool(rv_text) and rv_text != "0" and start < self.compacted
        if too_old and self.http_410:
            raise ApiError(410, "Expired", f"too old resource version: {start} ({self.compacted})")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        w = _Watch(res.plural, ns, reqs)
        if too_old:
            gone = status_doc(410, "Expired", f"too old resource version: {start}")
            await resp.write(orjson.dumps({"type": "ERROR", "object": gone}) + b"\n")
            return resp
        if start == 0:  # "any": the current state as ADDED, then changes
            for o in self.list(res.plural, ns):
                if selected(o, reqs):
                    w.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            for rv, plural, ons, ev in self.events:
                if rv > start and plural == res.plural and (not ns or ons == ns):
                    if selected(ev["object"], reqs):
                        w.queue.put_nowait(ev)
        self.watches.add(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    if bookmarks:
                        mark = {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(self.rv)},
                            },
                        }
                        await resp.write(orjson.dumps(mark) + b"\n")
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    continue
                if ev is None:
                    break  # the server goes away
                await resp.write(orjson.dumps(ev) + b"\n")
                if ev["type"] == "ERROR":
                    break
        finally:
            self.watches.discard(w)
        return resp

    async def _cluster_object(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        if res.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._one(request, res, "", request.match_info["name"])

    async def _object(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        return await self._one(request, res, request.match_info["ns"], request.match_info["name"])

    async def _one(
        self, request: web.Request, res: Resource, ns: str, name: str
    ) -> web.StreamResponse:
        key = (res.plural, ns, name)
        if request.method == "GET":
            return _json(self._existing(key))
        if request.method == "DELETE":
            return _json(self.delete(res.plural, ns, name))
        if request.method == "PATCH":
            ctype = request.content_type
            body = await request.read()
            if ctype == "application/apply-patch+yaml":
                obj = self.apply(res, ns, name, body, request.query)
            elif ctype == "application/merge-patch+json":
                obj = self._merge(key, orjson.loads(body), request.query)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {ctype}",
                )
            return _json(obj)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")

    def _existing(self, key: Key) -> dict[str, Any]:
        obj = self.objects.get(key)
        if obj is None:
            plural, _, name = key
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def apply(self, res: Resource, ns: str, name: str, body: bytes, query: Any) -> dict[str, Any]:
        manager = query.get("fieldManager", "")
        if not manager:
            raise ApiError(
                400,
                "BadRequest",
                "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value",
            )
        force = query.get("force", "").lower() in ("true", "1")
        config = yaml.safe_load(body)
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "the apply body must be an object")
        meta = config.get("metadata") or {}
        if config.get("apiVersion") != res.api_version or config.get("kind") != res.kind:
            raise ApiError(
                400,
                "BadRequest",
                f"apiVersion/kind {config.get('apiVersion')}/{config.get('kind')} does not "
                f"match {res.api_version}/{res.kind}",
            )
        if meta.get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        if res.namespaced and meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
        if res.namespaced and ns and ("namespaces", "", ns) not in self.objects and ns != "default":
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        for f in _SERVER_FIELDS:
            meta.pop(f, None)
        key = (res.plural, ns, name)
        old = self.objects.get(key)
        mine = leaves(config)
        owners = self.owners.setdefault(key, {})
        if old is None:
            obj = copy.deepcopy(config)
            if res.plural == "deployments":
                obj.setdefault("spec", {}).setdefault("replicas", 1)  # the API's default
            if res.namespaced:
                obj["metadata"]["namespace"] = ns
        else:
            conflicts = [
                ".".join(p)
                for p, v in mine.items()
                if owners.get(p, manager) != manager and get_path(old, p) != v
            ]
            if conflicts and not force:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Apply failed with {len(conflicts)} conflict(s): conflicts with "
                    f'"{owners[tuple(conflicts[0].split("."))]}": .{conflicts[0]}',
                )
            obj = copy.deepcopy(old)
            before = leaves(self.applied.get(key, {}).get(manager, {}))
            for p in before:  # what this manager applied and applies no more
                if p not in mine and owners.get(p) == manager:
                    drop_path(obj, p)
                    owners.pop(p, None)
            obj = deep_merge(obj, config)
        for p in mine:
            owners[p] = manager
        self.applied.setdefault(key, {})[manager] = config
        managers = sorted(set(owners.values()))
        obj["metadata"]["managedFields"] = [
            {"manager": m, "operation": "Apply" if m in self.applied[key] else "Update"}
            for m in managers
        ]
        if old is not None and _same(old, obj):
            return old  # a no-op apply: nothing changes, not even the resourceVersion
        return self.put(res.plural, obj)

    def _merge(self, key: Key, patch: Any, query: Any) -> dict[str, Any]:
        old = self._existing(key)
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be an object")
        obj = merge_patch(old, patch)
        manager = query.get("fieldManager", "") or "unknown"
        owners = self.owners.setdefault(key, {})
        for p in leaves(patch):
            owners[p] = manager
        if _same(old, obj):
            return old
        return self.put(key[0], obj)

    def delete(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        key = (plural, ns, name)
        obj = self._existing(key)
        if plural == "pods" and (obj.get("spec") or {}).get("nodeName"):
            if not obj["metadata"].get("deletionTimestamp"):  # the kubelet stops it first
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = now_iso()
                grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                obj["metadata"]["deletionGracePeriodSeconds"] = grace
                obj = self.put(plural, obj)
            return obj
        gone = self.remove(plural, ns, name)
        if plural == "namespaces":
            for p, ons, oname in list(self.objects):
                if ons == name:
                    with_ns_gone = self.objects.get((p, ons, oname))
                    if with_ns_gone is not None:
                        self.delete(p, ons, oname)
        return gone or obj

    async def _subresource(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        ns, name, sub = (request.match_info[k] for k in ("ns", "name", "sub"))
        if res.plural != "deployments" or sub != "scale":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        key = (res.plural, ns, name)
        dep = self._existing(key)
        if request.method == "PATCH":
            if request.content_type != "application/merge-patch+json":
                raise ApiError(415, "UnsupportedMediaType", "use a merge patch on scale")
            patch = orjson.loads(await request.read())
            replicas = (patch.get("spec") or {}).get("replicas")
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", "spec.replicas: must be a non-negative integer")
            dep = self._merge(key, {"spec": {"replicas": replicas}}, request.query)
        elif request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")
        return _json(scale_of(dep))


def scale_of(dep: dict[str, Any]) -> dict[str, Any]:
    meta = dep["metadata"]
    sel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", ""),
            "resourceVersion": meta["resourceVersion"],
            "uid": meta["uid"],
        },
        "spec": {"replicas": (dep.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (dep.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(sel.items())),
        },
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = ("resourceVersion", "managedFields")
    ma = {k: v for k, v in a.get("metadata", {}).items() if k not in strip}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k not in strip}
    rest_a = {k: v for k, v in a.items() if k != "metadata"}
    rest_b = {k: v for k, v in b.items() if k != "metadata"}
    return ma == mb and rest_a == rest_b


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")
