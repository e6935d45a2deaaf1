"""Proxy mode: the router forwards a request to a worker and relays the answer.

`message.py` holds the request view, the sink protocol and the one parsing rule;
`core.py` decides, forwards, retries and accounts, and imports no server; `server.py`
(httptools) and `web.py` (aiohttp) are thin adapters that hand the core a request view
and a sink; `site.py` is the listening socket that starts every connection on
`server.py`. docs/architecture.md shows how they fit.
"""
