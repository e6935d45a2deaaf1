"""Talking to the Kubernetes API: plain requests, and a list-then-watch cache of one kind.

`KubeApi` sends requests through a `kubernetes_asyncio` `ApiClient` (its kubeconfig,
in-cluster and TLS handling, its aiohttp session) and hands back the JSON as dicts:
the provider builds its objects as dicts and needs no generated models.

`Reflector` keeps every object of one kind that matches a label selector, across all
namespaces, the way client-go's informers do: list, then watch from the list's
resourceVersion; each event updates the cache and moves the resourceVersion on
(bookmarks too); a watch that ends (its timeout) is renewed from there; a `410 Gone`
(an ERROR event, or the HTTP status on a resourceVersion too old) is answered by a
fresh list, whose differences from the cache become events, so nothing is lost. An
API server that goes away is retried with a capped exponential backoff, forever: the
loop never ends on an error, only when cancelled, and the cache keeps its last view
meanwhile (workers keep serving while their API server is down).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
OnEvent = Callable[[str, dict[str, Any]], None]  # ("ADDED" | "MODIFIED" | "DELETED", object)

_BACKOFF_FIRST_S = 0.1


class KubeError(Exception):
    """The API server answered with an error status; `status` 0: no usable answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying as it is: unreachable, overloaded, a conflict, a timeout."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


class KubeApi:
    """Requests as dicts over a `kubernetes_asyncio.client.ApiClient` (see module doc)."""

    def __init__(self, client: Any, request_timeout_s: float) -> None:
        self.client = client
        self.request_timeout_s = request_timeout_s

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        resp = await self._send(method, path, query, body, content_type, self.request_timeout_s)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status >= 300:
            raise KubeError(resp.status, _status_message(data, resp.reason or ""))
        doc = orjson.loads(data) if data else {}
        return doc if isinstance(doc, dict) else {}

    async def stream(
        self, path: str, query: dict[str, str], read_timeout_s: float
    ) -> aiohttp.ClientResponse:
        """A watch: the open response (the caller reads lines and releases it)."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.request_timeout_s, sock_read=read_timeout_s
        )
        resp = await self._send("GET", path, query, None, "application/json", timeout)
        if resp.status >= 300:
            try:
                data = await resp.read()
            finally:
                resp.release()
            raise KubeError(resp.status, _status_message(data, resp.reason or ""))
        return resp

    async def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str,
        limit: float | aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        resp: aiohttp.ClientResponse = await self.client.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limit,
        )
        return resp


def _status_message(data: bytes, fallback: str) -> str:
    """The `message` of a Kubernetes Status body, else the HTTP reason."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return fallback or data[:200].decode("utf-8", "replace")
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return fallback


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


class Reflector:
    """A cache of one kind's objects, kept by list + watch (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        selector: str,
        *,
        name: str,
        on_event: OnEvent | None = None,
        watch_timeout_s: float = 300.0,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.api = api
        self.path = path  # the all-namespaces collection, e.g. /api/v1/pods
        self.selector = selector
        self.name = name
        self.on_event = on_event
        self.watch_timeout_s = watch_timeout_s
        self.backoff_max_s = backoff_max_s
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None  # None: list next
        self.synced = asyncio.Event()  # set once the first list is in
        self.lists = 0  # how many lists so far (tests read it: a 410 makes one)
        self.failures = 0  # in a row; 0 once connected again
        self.last_error = ""

    async def run(self) -> None:
        """List and watch until cancelled, reconnecting after any failure."""
        task = asyncio.current_task()
        while True:
            try:
                await self.run_once()
            except (aiohttp.ClientError, OSError, TimeoutError, KubeError, ValueError) as exc:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a timeout racing our cancel
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self.backoff_max_s, _BACKOFF_FIRST_S * 2 ** (self.failures - 1))
                delay *= random.uniform(0.8, 1.0)
                level = logging.WARNING if self.failures in (1, 10) else logging.DEBUG
                log.log(level, "%s: %s; retrying in %.1fs", self.name, self.last_error, delay)
                await asyncio.sleep(delay)

    async def run_once(self) -> None:
        """List if needed, then follow one watch until it ends, a 410 or an error."""
        if self.resource_version is None:
            await self._list()
        rv = self.resource_version
        assert rv is not None
        query = {
            "labelSelector": self.selector,
            "watch": "true",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, int(self.watch_timeout_s))),
        }
        try:
            resp = await self.api.stream(self.path, query, self.watch_timeout_s + 30)
        except KubeError as exc:
            if exc.status == 410:
                log.info("%s: resourceVersion %s is gone (410); listing again", self.name, rv)
                self.resource_version = None
                return
            raise
        self._connected()
        try:
            while True:
                line = await resp.content.readline()
                if not line:
                    return  # the watch's timeout: renew it from resource_version
                if not line.strip():
                    continue
                if not self._event(orjson.loads(line)):
                    return
        finally:
            resp.close()  # an abandoned stream is not reused

    async def _list(self) -> None:
        doc = await self.api.request("GET", self.path, query={"labelSelector": self.selector})
        items = [o for o in doc.get("items") or [] if isinstance(o, dict)]
        fresh = {key_of(o): o for o in items}
        old = self.objects
        self.objects = fresh
        self.resource_version = str((doc.get("metadata") or {}).get("resourceVersion") or "0")
        self.lists += 1
        self._connected()
        self.synced.set()
        if self.on_event is not None:  # what changed while we were not watching
            for k, o in old.items():
                if k not in fresh:
                    self.on_event("DELETED", o)
            for k, o in fresh.items():
                if k not in old:
                    self.on_event("ADDED", o)
                elif _rv(o) != _rv(old[k]):
                    self.on_event("MODIFIED", o)

    def _connected(self) -> None:
        if self.failures:
            log.info("%s: connected again after %d failure(s)", self.name, self.failures)
        self.failures = 0
        self.last_error = ""

    def _event(self, ev: Any) -> bool:
        """Apply one watch event; False when the watch must end (410: list again)."""
        if not isinstance(ev, dict):
            raise ValueError("a watch event that is not an object")
        kind, obj = ev.get("type"), ev.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"a watch event ({kind}) without an object")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                log.info("%s: watch expired (410 Gone); listing again", self.name)
                self.resource_version = None
                return False
            raise KubeError(int(code or 0), str(obj.get("message", "watch error")))
        rv = _rv(obj)
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return True
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown watch event type {kind!r}")
        k = key_of(obj)
        if kind == "DELETED":
            self.objects.pop(k, None)
        else:
            self.objects[k] = obj
        if rv:
            self.resource_version = rv
        if self.on_event is not None:
            self.on_event(kind, obj)
        return True


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
