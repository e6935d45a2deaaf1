"""The few exceptions handlers raise, translated to JSON at one edge (a middleware).

Every error body is `{"error": {"code", "message"}}` plus fields that apply; never a stack
trace. Unexpected exceptions are logged once with their traceback and answered 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from router.auth import AuthError
from router.state.base import StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class ApiError(Exception):
    """An error answer: HTTP status, a stable code, a message, and extra body fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        /,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


async def read_within(request: web.Request, coro: Awaitable[T]) -> T:
    """Await a read of the request body, or 408 if the client is too slow to send it."""
    from router.context import CTX

    timeout_s = request.app[CTX].settings.server.request_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, /, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error answer; `extra` fields (even one named `status`) join the body."""
    return json_response({"error": {"code": code, "message": message}, **extra}, status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)
    except AuthError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except StoreUnavailable as exc:
        from router.context import CTX

        if CTX in request.app:
            request.app[CTX].metrics.store_errors.inc()
        return error_response(
            503,
            "store_unavailable",
            f"router state store is unreachable ({exc}); retry shortly",
            headers={"Retry-After": "1"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.reason, headers=keep)
    except ConnectionResetError:
        # The client hung up: normal for a proxy, never worth a traceback.
        log.debug("client went away during %s %s", request.method, request.path)
        return web.Response(status=499)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the router log")
