"""What keeps credentials out of MLflow and the logs: secret-named keys and `user:password@` in URLs
are replaced by `***` in params, tags, the logged config and every message that names a store."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

REDACTED = "***"
# Keys whose values are secrets (AWS keys, tokens, passwords) never reach params or tags.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private)", re.I)
# `scheme://user:password@host` in any value.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")
# What MLflow takes as a param name.
_PARAM_NAME = re.compile(r"[\w\-. /:]+")
# MLflow's longest param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH); longer ones are cut.
MAX_PARAM_CHARS = 6000
_CUT = "..."


def redact(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(REDACTED + "@", value)
    return value


ERROR_SUMMARY_CHARS = 200


def error_summary(error: BaseException) -> str:
    """An exception's first line, cut to a tag's worth, credentials redacted."""
    return redact((str(error).strip().splitlines() or [""])[0][:ERROR_SUMMARY_CHARS])


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """`{"solver": {"lr": 0.01}}` -> `{"solver.lr": "0.01"}`, secrets redacted."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        # A section whose keys MLflow cannot take as names (sweep.variants: "transfer+MLP (cls+box)")
        # is one JSON param.
        if isinstance(value, dict) and not all(_PARAM_NAME.fullmatch(str(k)) for k in value):
            value = json.dumps(value)
        if isinstance(value, dict):
            flat.update(flatten_params(value, name + "."))
        elif _SECRET_KEY.search(str(key)):
            flat[name] = REDACTED
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(redact(value))
            flat[name] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - len(_CUT)] + _CUT
    return flat


def redact_text(text: str) -> str:
    """A YAML text (the logged config) with secret-named keys' values and URL credentials redacted."""
    lines = []
    for line in text.splitlines():
        key = line.split(":", 1)[0]
        lines.append(f"{key}: {REDACTED}" if ":" in line and _SECRET_KEY.search(key) else redact(line))
    return "\n".join(lines) + "\n"


class RedactingFilter(logging.Filter):
    """On a handler: every record it writes with URL credentials redacted (an MLflow error logged
    with its request URL, a library's own message naming a store), whatever logger it came from."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Redact what the root logger's handlers write (call after logging.basicConfig)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
