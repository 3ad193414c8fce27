from typing import Sequence

__all__ = ['Error', 'Undetermined', 'DeadlineExceeded', 'Unavailable', 'InvalidArgument', 'KeyTooLarge', 'ValueTooLarge', 'AuthError', 'ProtocolError', 'PartialBatch']

class Error(Exception):
    '''Base class of every error the client raises.

    ``code`` is a stable, machine-readable name (``"Unavailable"``, ``"KeyTooLarge"``,
    ...): the Rust SDK's ``Error::code()``, the same in every Tessera SDK. A server error
    the client has no class for is raised as a plain ``Error`` (codes ``"SessionExpired"``,
    ``"ServerError"``).
    '''
    code: str
    def __init__(self, message: str = '', *, code: str | None = None) -> None:
        """Creates the error with its message and, if given, a more specific ``code``."""
    @property
    def message(self) -> str:
        """The error's message."""

class Undetermined(Error):
    """A write's fate is unknown: it may have been applied.

    Raised when the deadline passed (or a failure that cannot be retried happened) after an
    attempt that may have reached the server. Read the key to learn the outcome.
    """
    code: str

class DeadlineExceeded(Error, TimeoutError):
    """The call's deadline (``timeout``) passed before it completed; a write was not applied."""
    code: str

class Unavailable(Error, ConnectionError):
    '''No route to the data: PD or the replicas did not answer before the deadline, or a
    node\'s storage failed (code ``"StorageUnavailable"``). A write was not applied.'''
    code: str

class InvalidArgument(Error, ValueError):
    '''The request or the client configuration (code ``"Config"``) is invalid: an empty key,
    an inverted range, a bad timeout, a closed client, ...'''
    code: str

class KeyTooLarge(InvalidArgument):
    """A key is longer than the cluster's limit (``size`` > ``limit`` bytes)."""
    code: str
    size: int
    limit: int
    def __init__(self, message: str = '', *, code: str | None = None, size: int = 0, limit: int = 0) -> None:
        """Creates the error with the key's ``size`` and the ``limit`` it exceeds."""

class ValueTooLarge(InvalidArgument):
    """A value is longer than the cluster's limit (``size`` > ``limit`` bytes)."""
    code: str
    size: int
    limit: int
    def __init__(self, message: str = '', *, code: str | None = None, size: int = 0, limit: int = 0) -> None:
        """Creates the error with the value's ``size`` and the ``limit`` it exceeds."""

class AuthError(Error):
    '''TLS files unusable (code ``"Tls"``), or the cluster refused this client\'s identity
    (``"Unauthenticated"``, ``"PermissionDenied"``).'''
    code: str

class ProtocolError(Error):
    '''A peer broke the protocol or speaks an unsupported version (``"UnsupportedVersion"``).'''
    code: str

class PartialBatch(Error):
    """Some parts of a multi-region ``batch_put`` failed.

    Positions index the caller's pairs: ``applied`` were written, ``undetermined`` may or
    may not have been, every other position was not. ``cause`` is the first failure.
    """
    code: str
    total: int
    applied: tuple[int, ...]
    undetermined: tuple[int, ...]
    cause: Error | None
    def __init__(self, message: str = '', *, code: str | None = None, total: int = 0, applied: Sequence[int] = (), undetermined: Sequence[int] = (), cause: Error | None = None) -> None:
        """Creates the error with the batch's outcome per position."""
