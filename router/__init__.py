"""The inference router.

`app` builds the aiohttp service; `ticket` answers `/route` (ticket mode); `admin` manages
workers at run time. Choices are made by the pure policies in `balancer` over a local
`snapshot` of worker state, and made atomic by the `state` store (memory or Redis).
`health` polls workers, `signing` signs tickets, `auth` checks API keys, `metrics` exports
Prometheus series, `control/` is the control plane (endpoints, providers, lifecycle,
the autoscaler), and `config` validates settings.
`client` is for callers: route, then call the worker with the ticket (sync or async);
`version` is the installed version, for `--version`.
"""
