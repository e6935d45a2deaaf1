"""Logging set-up shared by the router and the worker."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class _BadRequestFilter(logging.Filter):
    """A malformed request (bad headers, too many, too long) is the client's error.

    aiohttp logs each with ERROR and a traceback, so any client could fill the log with
    them. Keep one DEBUG line instead, without the traceback or the offending bytes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger("aiohttp.server").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = (
            "bad request from %s: HTTP %s",
            (record.args[0] if isinstance(record.args, tuple) and record.args else "?", exc.code),
        )
        record.exc_info = record.exc_text = None
        return True


def configure(level: str, tag: str = "") -> None:
    """Log to stderr at `level`; client errors from aiohttp's server stay quiet."""
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"
    )
    logging.getLogger("aiohttp.server").addFilter(_BadRequestFilter())
