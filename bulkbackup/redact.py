"""Tokens never reach logs, errors or stored data: scrub them from text and log records."""

from __future__ import annotations

import logging
from collections.abc import Iterable

_SECRETS: list[str] = []


def add_secrets(secrets: Iterable[str]) -> None:
    for s in secrets:
        if s and s not in _SECRETS:
            _SECRETS.append(s)


def redact(text: str) -> str:
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_redaction(tokens: Iterable[str]) -> None:
    """Register ``tokens`` and scrub them from every log record of this process."""
    add_secrets(tokens)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
