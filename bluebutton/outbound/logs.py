"""httpx's log records without query strings: they carry patient ids."""

from __future__ import annotations

import logging

import httpx


class _WithoutQuery(logging.Filter):
    """Drops the query string from URLs in httpx's log records: they carry patient ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.copy_with(query=None) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


def redact_http_logs() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _WithoutQuery) for f in logger.filters):
        logger.addFilter(_WithoutQuery())
