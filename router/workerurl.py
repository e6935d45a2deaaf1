"""Worker URLs from registrations, parsed strictly and checked against where they point.

A worker token is a credential a worker image carries, so whatever registers with it is
treated as hostile: the URL must parse as exactly `http(s)://host[:port][/path]` (no user
info, query or fragment, a port in range, a host that is an IP literal or a DNS name),
and it may not point at the router itself (it would become "ready" and proxy to itself),
at link-local or cloud-metadata addresses (the router would fetch the instance's
credentials for whoever asked), or at an unspecified or multicast address; with
`registration.allowed_networks` set, IP literals must lie in one of those networks.
Pure code: no DNS lookups here (a name is checked where it can be, by its spelling).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from router.proxy.message import bad_path

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
# Names of metadata services, whatever they resolve to.
_METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})
# Metadata services outside the link-local ranges.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("100.100.100.200", "168.63.129.16", "fd00:ec2::254", "192.0.0.192")
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadWorkerUrl(ValueError):
    """The URL cannot be a worker's; the message says why."""


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a worker URL, or BadWorkerUrl."""
    if len(url) > 2048 or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise BadWorkerUrl("must be printable ASCII without spaces, at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadWorkerUrl(f"does not parse: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise BadWorkerUrl("must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BadWorkerUrl("must not carry a user name or password")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise BadWorkerUrl("must not have a query or fragment")
    host = parts.hostname or ""
    if not host:
        raise BadWorkerUrl("has no host")
    if port is None:
        if parts.netloc.endswith(":"):
            raise BadWorkerUrl("has an empty port")
        port = 443 if parts.scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise BadWorkerUrl("port must be between 1 and 65535")
    if _address(host) is None:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise BadWorkerUrl(f"host {host!r} is neither an IP address nor a DNS name")
    path = parts.path.rstrip("/")
    if path and (not _PATH_CHARS.match(path) or bad_path(path.encode()) is not None):
        raise BadWorkerUrl("path has characters or segments a base path cannot have")
    return parts.scheme, host.lower().rstrip("."), port, path


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check(
    url: str,
    *,
    router_port: int,
    router_hosts: Iterable[str] = (),
    allowed_networks: Iterable[str] = (),
) -> str:
    """`url` normalised (no trailing slash) if a worker may register it, else BadWorkerUrl.

    `router_port` and `router_hosts`: where the router listens; a URL on that port of a
    loopback, unspecified or router address is the router itself.
    """
    _, host, port, _ = parse(url)
    addr = _address(host)
    if host in _METADATA_NAMES or (addr is not None and addr in _METADATA_ADDRESSES):
        raise BadWorkerUrl("points at a cloud metadata service")
    if addr is not None:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_link_local:
            raise BadWorkerUrl("points at a link-local address (cloud metadata lives there)")
        if addr.is_unspecified or addr.is_multicast or str(addr) == "255.255.255.255":
            raise BadWorkerUrl("points at an unspecified, broadcast or multicast address")
    local = host in _LOOPBACK_NAMES or (addr is not None and addr.is_loopback)
    if port == router_port and (local or host in {h.lower() for h in router_hosts}):
        raise BadWorkerUrl("points at the router itself")
    networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    if networks:
        if addr is None:
            raise BadWorkerUrl("must be an IP address in registration.allowed_networks")
        if not any(addr.version == n.version and addr in n for n in networks):
            raise BadWorkerUrl("is outside registration.allowed_networks")
    return url.rstrip("/")
