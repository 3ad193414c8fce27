"""The exceptions the Tessera client raises.

Every one is a :class:`Error` with a stable ``code``, the same string as the Rust SDK's
``Error::code()``. The class says what happened to a write:

- :class:`Undetermined`: it may or may not have been applied (read the key to find out);
- :class:`PartialBatch`: some pairs of a multi-region batch were applied, and it says which;
- any other: it was **not** applied.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

__all__ = [
    "Error",
    "Undetermined",
    "DeadlineExceeded",
    "Unavailable",
    "InvalidArgument",
    "KeyTooLarge",
    "ValueTooLarge",
    "AuthError",
    "ProtocolError",
    "PartialBatch",
]


class Error(Exception):
    """Base class of every error the client raises.

    ``code`` is a stable, machine-readable name (``"Unavailable"``, ``"KeyTooLarge"``,
    ...): the Rust SDK's ``Error::code()``, the same in every Tessera SDK. A server error
    the client has no class for is raised as a plain ``Error`` (codes ``"SessionExpired"``,
    ``"ServerError"``).
    """

    code: str = "ServerError"

    def __init__(self, message: str = "", *, code: Optional[str] = None) -> None:
        """Creates the error with its message and, if given, a more specific ``code``."""
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The error's message."""
        return str(self.args[0]) if self.args else ""


class Undetermined(Error):
    """A write's fate is unknown: it may have been applied.

    Raised when the deadline passed (or a failure that cannot be retried happened) after an
    attempt that may have reached the server. Read the key to learn the outcome.
    """

    code = "Undetermined"


class DeadlineExceeded(Error, TimeoutError):
    """The call's deadline (``timeout``) passed before it completed; a write was not applied."""

    code = "DeadlineExceeded"


class Unavailable(Error, ConnectionError):
    """No route to the data: PD or the replicas did not answer before the deadline, the
    region's leader kept refusing (no quorum of its replicas can write; the message says
    why), or a node's storage failed (code ``"StorageUnavailable"``). A write was not
    applied."""

    code = "Unavailable"


class InvalidArgument(Error, ValueError):
    """The request or the client configuration (code ``"Config"``) is invalid: an empty key,
    an inverted range, a bad timeout, a closed client, ..."""

    code = "InvalidArgument"


class KeyTooLarge(InvalidArgument):
    """A key is longer than the cluster's limit (``size`` > ``limit`` bytes)."""

    code = "KeyTooLarge"

    def __init__(self, message: str = "", *, code: Optional[str] = None, size: int = 0, limit: int = 0) -> None:
        """Creates the error with the key's ``size`` and the ``limit`` it exceeds."""
        super().__init__(message, code=code)
        self.size: int = size
        self.limit: int = limit


class ValueTooLarge(InvalidArgument):
    """A value is longer than the cluster's limit (``size`` > ``limit`` bytes)."""

    code = "ValueTooLarge"

    def __init__(self, message: str = "", *, code: Optional[str] = None, size: int = 0, limit: int = 0) -> None:
        """Creates the error with the value's ``size`` and the ``limit`` it exceeds."""
        super().__init__(message, code=code)
        self.size: int = size
        self.limit: int = limit


class AuthError(Error):
    """TLS files unusable (code ``"Tls"``), or the cluster refused this client's identity
    (``"Unauthenticated"``, ``"PermissionDenied"``)."""

    code = "Unauthenticated"


class ProtocolError(Error):
    """A peer broke the protocol or speaks an unsupported version (``"UnsupportedVersion"``)."""

    code = "Protocol"


class PartialBatch(Error):
    """Some parts of a multi-region ``batch_put`` failed.

    Positions index the caller's pairs: ``applied`` were written, ``undetermined`` may or
    may not have been, every other position was not. ``cause`` is the first failure.
    """

    code = "PartialBatch"

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[str] = None,
        total: int = 0,
        applied: Sequence[int] = (),
        undetermined: Sequence[int] = (),
        cause: Optional[Error] = None,
    ) -> None:
        """Creates the error with the batch's outcome per position."""
        super().__init__(message, code=code)
        self.total: int = total
        self.applied: Tuple[int, ...] = tuple(applied)
        self.undetermined: Tuple[int, ...] = tuple(undetermined)
        self.cause: Optional[Error] = cause
