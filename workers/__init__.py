"""The reference worker sidecar.

`cli` parses flags and serves; `app` builds the aiohttp app (ticket check, load
accounting, /readyz report, self-registration); `verify` holds the pure ticket checks;
`backends` are the model servers it can front (`synthetic` is a built-in stand-in).
"""
