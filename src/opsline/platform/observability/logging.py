"""structlog configuration: JSON in production, console in development.

Every line carries the request id, tenant and user bound in context variables
by the HTTP middleware (or the job being run). Values under keys that look like
secrets are replaced before rendering, and bearer tokens or API keys that slip
into free text are masked, so that passwords, tokens and keys never reach a log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SENSITIVE_KEYS = re.compile(
    r"pass(word)?|secret|token|api[_-]?key|authorization|cookie|credential|private", re.I
)
SENSITIVE_TEXT = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]+|(olk_)[A-Za-z0-9_-]+|(eyJ)[A-Za-z0-9._-]{10,}"
)
REDACTED = "[redacted]"


# PostgreSQL names the values of a violated key in its error's DETAIL
# ("Key (email)=(ann@example.com) already exists."): customers' data, whatever
# hides a statement's parameters.
KEY_VALUES = re.compile(
    r"(Key \(.*?\)=\().*?(\) (?:already exists|is not present|is still referenced|conflicts with))"
)


def _mask_text(text: str) -> str:
    text = SENSITIVE_TEXT.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + REDACTED, text)
    return KEY_VALUES.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 4:
        return value
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED
            if isinstance(k, str) and SENSITIVE_KEYS.search(k)
            else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if SENSITIVE_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # Drop below-level events before any processing (the redaction walk included).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our middleware logs each request once (without query strings); uvicorn's
    # access log would repeat it and could carry tokens in URLs.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
