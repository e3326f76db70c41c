"""Errors of the shared core.

    MoorageError
    ├── ConfigError       a config file or flag that cannot be used (names the field)
    ├── ManifestError     YAML/JSON input that is malformed, too large or unsafe
    ├── ProtocolError     a wire message that breaks the envelope contract
    ├── TokenError        a join token that is malformed, expired or for another CA
    └── APIError          the admin API answered with an error (carries the HTTP status)
"""

from __future__ import annotations


class MoorageError(Exception):
    """Base class; the message is meant for the operator and says what to do."""


class ConfigError(MoorageError):
    pass


class ManifestError(MoorageError):
    pass


class ProtocolError(MoorageError):
    pass


class TokenError(MoorageError):
    pass


class APIError(MoorageError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
