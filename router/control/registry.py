"""The endpoint registry: config endpoints and API endpoints, one live view per replica.

Config endpoints come from this replica's config file (`source=config`); API endpoints
are documents in the store (`source=api`), so every replica reads the same ones. The
registry keeps `endpoints`, the dict the data plane reads (`ctx.endpoints` is this very
dict, changed in place), and `records`, the control plane's view with each endpoint's
lifecycle state. `refresh()` polls the store's version counter (one small read) and
re-reads the documents only when it changed, so a create or delete reaches every
replica within one poll interval. If the store comes back empty while this replica
still knows API endpoints (a Redis restarted without its data), they are kept, and
`restore()` writes them back: a lost store never loses an endpoint while a replica runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson

from router.config import ConfigError, EndpointSettings, endpoint_from_table
from router.control.spec import Autoscaling, EndpointRecord, RuntimeSpec
from router.state.base import Store

log = logging.getLogger(__name__)

KIND = "endpoint"


class Conflict(Exception):
    """The name is taken, or the record changed since it was read."""


def settings_of(record: EndpointRecord) -> EndpointSettings:
    """The data-plane settings of an API endpoint (validated when it was created)."""
    table = {**record.settings, "name": record.name, "workspace": record.workspace}
    ep = endpoint_from_table(table, "endpoint")
    # the record's own autoscaling and runtime, not the table's
    return _with_control(ep, record)


def _with_control(ep: EndpointSettings, record: EndpointRecord) -> EndpointSettings:
    from dataclasses import replace

    return replace(ep, autoscaling=record.autoscaling, local=record.runtime)


def config_record(ep: EndpointSettings) -> EndpointRecord:
    """The control plane's record of a config endpoint (kept in memory, never stored)."""
    return EndpointRecord(
        name=ep.name,
        workspace=ep.workspace,
        source="config",
        provider="local" if ep.local is not None else "static",
        runtime=ep.local or RuntimeSpec(),
        autoscaling=ep.autoscaling if ep.local is not None else Autoscaling(0, 0),
        state="Running" if ep.workers else "Pending",
    )


class Registry:
    def __init__(self, store: Store, config: Iterable[EndpointSettings]) -> None:
        self.store = store
        self.config = {ep.name: ep for ep in config}
        self.endpoints: dict[str, EndpointSettings] = dict(self.config)
        self.records: dict[str, EndpointRecord] = {
            name: config_record(ep) for name, ep in self.config.items()
        }
        self.version = 0  # bumped on every change this replica sees
        self._store_version = -1
        self.lost: set[str] = set()  # API endpoints the store no longer has (it lost data)

    # reads
    def api_records(self) -> list[EndpointRecord]:
        return [r for r in self.records.values() if r.source == "api"]

    def visible(self, workspace: str | None) -> list[EndpointRecord]:
        """Records of one workspace (None: all), sorted by name."""
        out = [r for r in self.records.values() if workspace is None or r.workspace == workspace]
        return sorted(out, key=lambda r: r.name)

    # store sync
    async def refresh(self) -> bool:
        """Re-read API endpoints if the store says anything changed; True if it did."""
        version = await self.store.docs_version(KIND)
        if version == self._store_version:
            return False
        docs = await self.store.list_docs(KIND)
        self._store_version = version
        records: dict[str, EndpointRecord] = {}
        for name, (v, raw) in docs.items():
            try:
                records[name] = EndpointRecord.from_doc(orjson.loads(raw), v)
            except (ValueError, TypeError) as exc:
                log.error("endpoint %r in the store is unreadable (%s); ignoring it", name, exc)
        known = {r.name: r for r in self.api_records()}
        if version == 0 and not records and known:
            # The store lost its data (or was flushed): keep serving what we know.
            self.lost = set(known)
            log.warning(
                "the store holds no endpoints but this replica knows %d; keeping them "
                "(the control-plane leader writes them back)",
                len(known),
            )
            return False
        self._apply(records)
        return True

    def _apply(self, records: dict[str, EndpointRecord]) -> None:
        endpoints = dict(self.config)
        merged = {name: config_record(ep) for name, ep in self.config.items()}
        for name, record in records.items():
            if name in self.config:
                continue  # config wins; the API refuses such names anyway
            try:
                endpoints[name] = settings_of(record)
            except ConfigError as exc:
                log.error("endpoint %r has settings this router cannot use: %s", name, exc)
                continue
            merged[name] = record
        changed = merged != self.records
        # in place: the data plane holds a reference to this very dict
        self.endpoints.clear()
        self.endpoints.update(endpoints)
        self.records = merged
        if changed:
            self.version += 1

    async def restore(self) -> int:
        """Write back API endpoints the store lost; how many were written."""
        written = 0
        for name in sorted(self.lost):
            record = self.records.get(name)
            if record is None or record.source != "api":
                continue
            if await self.store.put_doc(KIND, name, _doc(record), 0) is not None:
                written += 1
        self.lost.clear()
        self._store_version = -1  # re-read what is there now
        if written:
            log.warning("wrote %d endpoint(s) back to the store", written)
        return written

    # writes (the APIs and the lifecycle loop)
    async def create(self, record: EndpointRecord) -> EndpointRecord:
        """Store a new endpoint; Conflict if the name is taken anywhere."""
        if record.name in self.config:
            raise Conflict(record.name)
        version = await self.store.put_doc(KIND, record.name, _doc(record), 0)
        if version is None:
            raise Conflict(record.name)
        record.version = version
        await self.refresh()
        return record

    async def update(self, record: EndpointRecord) -> EndpointRecord:
        """Write a changed record at the version it was read; Conflict if it moved on."""
        version = await self.store.put_doc(KIND, record.name, _doc(record), record.version)
        if version is None:
            raise Conflict(record.name)
        record.version = version
        self.records[record.name] = record
        return record

    async def forget(self, record: EndpointRecord) -> bool:
        """Remove an endpoint's document (its workers are gone by now)."""
        deleted = await self.store.delete_doc(KIND, record.name)
        await self.refresh()
        return deleted


def _doc(record: EndpointRecord) -> bytes:
    return orjson.dumps(record.to_doc())
