"""TGI's `error_type`: the field Hugging Face's clients choose an exception class by.

Text Generation Inference answers errors as `{"error": "<message>", "error_type": "<type>"}`;
`text-generation` (`errors.parse_error`) and `huggingface_hub` raise `ValidationError`,
`OverloadedError` or `GenerationError` from `error_type`, and without one fall back on the
status (403 becomes `ShardNotReadyError`, 401 and 503 `UnknownError`). This project's
error body is `{"error": {"code", "message"}}`; the two cannot share the key `error`, so
the object stays and `error_type` joins it (docs/protocol.md, "Errors"). The reference
worker adds it to every error it answers; the router adds it on TGI's paths.
"""

from __future__ import annotations

# The paths TGI serves inference on (`/` is its compat route, what `Client(base_url)` posts to).
TGI_PATHS = frozenset({b"/", b"/generate", b"/generate_stream"})

# TGI's error_type for each status this project answers with; others get none.
TGI_ERROR_TYPES: dict[int, str] = {
    400: "validation",  # bad JSON, bad cost, a payload the backend cannot read
    401: "validation",  # no or unknown API key; the ticket (missing, forged, expired, replayed)
    403: "validation",  # a key not allowed (TGI clients would read 403 as ShardNotReadyError)
    413: "validation",  # body too large
    429: "overloaded",  # a full queue, or a key over its limits
    503: "overloaded",  # no worker ready, or this worker is draining: try again
    500: "generation",  # the router or the worker failed
    502: "generation",  # the worker or its model server did not answer
}
