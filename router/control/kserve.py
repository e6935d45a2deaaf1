"""`rawModelSpec`: a KServe InferenceService in YAML, read safely into what the router uses.

The text comes from an API client, so it is read as hostile: bounded in size, parsed by
PyYAML's safe loader with anchors and aliases refused outright (an alias bomb expands a
few hundred bytes into billions of nodes when walked), depth bounded, and only
`serving.kserve.io/v1beta1` `InferenceService` accepted. What the local provider needs
comes out of it: the model format (`predictor.model.modelFormat.name`), `storageUri`,
`minReplicas`/`maxReplicas`, `args` and `resources`; the Kubernetes provider applies
the document itself (with the router's labels stamped on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from router.jsonbody import too_deep

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
MAX_DEPTH = 32
MAX_NODES = 10_000


class SpecError(ValueError):
    """The spec cannot be used; `field` names the offending part (`rawModelSpec.spec...`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class InferenceService:
    doc: dict[str, Any]  # the whole document, as parsed
    name: str
    model_format: str
    storage_uri: str
    min_replicas: int | None
    max_replicas: int | None
    args: tuple[str, ...]
    resources: dict[str, Any]


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader, counting nodes and refusing anchors, aliases and merge keys."""

    nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed")
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None):
            raise yaml.YAMLError("anchors (&name) are not allowed")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise yaml.YAMLError(f"more than {MAX_NODES} nodes")
        return super().compose_node(parent, index)


def parse(text: str, *, max_bytes: int, where: str = "rawModelSpec") -> InferenceService:
    """The InferenceService in `text`, or SpecError naming what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise SpecError(where, f"must be at most {max_bytes} bytes")
    loader = _NoAliasLoader(text)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpecError(where, f"is not valid YAML: {_short(exc)}") from None
    finally:
        loader.dispose()
    if too_deep(doc, MAX_DEPTH):
        raise SpecError(where, f"nests deeper than {MAX_DEPTH} levels")
    if not isinstance(doc, dict):
        raise SpecError(where, "must be a YAML mapping (an InferenceService)")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError(f"{where}.apiVersion", f"must be {API_VERSION!r}")
    if doc.get("kind") != KIND:
        raise SpecError(f"{where}.kind", f"must be {KIND!r} (got {doc.get('kind')!r})")
    meta = _mapping(doc, "metadata", where, required=False)
    name = meta.get("name", "")
    if not isinstance(name, str):
        raise SpecError(f"{where}.metadata.name", "must be a string")
    spec = _mapping(doc, "spec", where)
    predictor = _mapping(spec, "predictor", f"{where}.spec")
    pw = f"{where}.spec.predictor"
    model = _mapping(predictor, "model", pw)
    mw = f"{pw}.model"
    fmt = _mapping(model, "modelFormat", mw).get("name")
    if not isinstance(fmt, str) or not fmt:
        raise SpecError(f"{mw}.modelFormat.name", "is required (e.g. sklearn, huggingface)")
    uri = model.get("storageUri", "")
    if not isinstance(uri, str):
        raise SpecError(f"{mw}.storageUri", "must be a string")
    args = model.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpecError(f"{mw}.args", "must be a list of strings")
    resources = model.get("resources", {})
    if not isinstance(resources, dict):
        raise SpecError(f"{mw}.resources", "must be a mapping")
    low = _replicas(predictor, "minReplicas", pw)
    high = _replicas(predictor, "maxReplicas", pw)
    if low is not None and high is not None and low > high:
        raise SpecError(f"{pw}.minReplicas", "must be at most maxReplicas")
    return InferenceService(doc, name, fmt, uri, low, high, tuple(args), resources)


def _mapping(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> dict[str, Any]:
    value = doc.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}.{key}", "is required and must be a mapping")
    return value


def _replicas(predictor: dict[str, Any], key: str, where: str) -> int | None:
    value = predictor.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1024:
        raise SpecError(f"{where}.{key}", "must be an integer from 0 to 1024")
    return value


def _short(exc: yaml.YAMLError) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."
