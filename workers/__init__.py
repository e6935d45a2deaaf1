"""The reference worker sidecar (docs/protocol.md, "The worker's side"; docs/architecture.md).

`cli` turns flags into `settings.WorkerSettings` and serves `app.build_app(settings)`,
draining on SIGTERM. `app` runs each inference request through the pure checks in
`verify` (ticket) and `load` (admission), then hands only the model payload to a
`backends.Backend` (`synthetic` is a built-in stand-in; `tgi`, `openai` and `bentoml`
forward to a model server over HTTP; `images/` holds the GPU worker images). Around it:
`keys` (the router's JWKS and/or a PEM file), `registration` (self-registration),
`metrics` (Prometheus); `errors` gives every error answer its one JSON shape.
"""
