"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class EdgeqError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class ConfigError(EdgeqError):
    pass


class ModelError(EdgeqError):
    pass


class DataError(EdgeqError):
    pass


class QuantizationError(EdgeqError):
    pass


class RuntimeUnavailable(EdgeqError):
    """A runtime, tool or device needed for a step is not present here."""


class TargetError(EdgeqError):
    pass


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first line, bounded: what a one-line message quotes from a library's error."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
