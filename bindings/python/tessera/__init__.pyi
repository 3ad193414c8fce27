from ._native import NativeClient as _NativeClient, Scanner as _Scanner
from ._common import Bytes as Bytes, ClusterStatus as ClusterStatus, NodeStatus as NodeStatus, Pairs as Pairs, PathLike, Peer as Peer, RegionStatus as RegionStatus
from ._errors import AuthError as AuthError, DeadlineExceeded as DeadlineExceeded, Error as Error, InvalidArgument as InvalidArgument, KeyTooLarge as KeyTooLarge, PartialBatch as PartialBatch, ProtocolError as ProtocolError, Unavailable as Unavailable, Undetermined as Undetermined, ValueTooLarge as ValueTooLarge
from types import TracebackType
from typing import Iterator, Sequence

__all__ = ['Bytes', 'ClusterStatus', 'NodeStatus', 'Pairs', 'Peer', 'RegionStatus', 'AuthError', 'DeadlineExceeded', 'Error', 'InvalidArgument', 'KeyTooLarge', 'PartialBatch', 'ProtocolError', 'Unavailable', 'Undetermined', 'ValueTooLarge', 'connect', 'Client', 'Scan']

def connect(pd: str | Sequence[str] | None = None, *, ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None, data_dir: PathLike | None = None, timeout: float | None = None, attempt_timeout: float | None = None) -> Client:
    '''Connects to a Tessera cluster and returns a :class:`Client`.

    Either ``pd`` (one ``host:port`` or several; any that answers will do) with the
    cluster\'s CA certificate ``ca`` and this client\'s certificate ``cert`` and private key
    ``key`` (PEM files; the cluster accepts only mutually authenticated TLS), or
    ``data_dir``, the directory of a ``tessera dev --data DIR`` cluster: its PD address and
    dev client certificate are read from there.

    ``timeout`` is the default deadline of every call, retries included (10 s), and also
    bounds connecting; ``attempt_timeout`` the longest wait for one attempt (3 s), so that a
    dead node does not eat the whole deadline.

    Raises :class:`Unavailable` if PD does not answer in time, :class:`AuthError` for
    unusable TLS files, :class:`InvalidArgument` (code ``"Config"``) for a bad configuration.
    '''

class Client:
    """A connection to a Tessera cluster; make one with :func:`connect`.

    Thread-safe: share one client between threads (each call releases the GIL while it
    waits). All calls share the connections, the routing cache and the client's session.
    Use it as a context manager, or call :meth:`close`.
    """
    _native: _NativeClient
    def __init__(self, native: _NativeClient) -> None:
        """Wraps a connected native client (use :func:`connect`)."""
    def get(self, key: Bytes, *, stale: bool = False, timeout: float | None = None) -> bytes | None:
        """Returns the value of ``key``, or ``None`` if it is absent.

        Linearizable by default; ``stale=True`` reads from any replica, which may miss the
        most recent writes but works with a minority of replicas up.
        """
    def put(self, key: Bytes, value: Bytes, *, timeout: float | None = None) -> None:
        """Sets ``key`` to ``value``. Applied exactly once, even when retried."""
    def delete(self, key: Bytes, *, timeout: float | None = None) -> bool:
        """Removes ``key``; returns whether it existed."""
    def append(self, key: Bytes, value: Bytes, *, timeout: float | None = None) -> int:
        """Appends ``value`` to the value of ``key`` (an absent key acts as empty); returns the
        new length in bytes. Applied exactly once, even when retried."""
    def compare_and_swap(self, key: Bytes, expected: Bytes | None, new: Bytes | None, *, timeout: float | None = None) -> bool:
        '''Sets ``key`` to ``new`` if its current value is ``expected``; returns whether it did.

        ``expected=None`` means "``key`` is absent"; ``new=None`` deletes the key.
        '''
    def batch_get(self, keys: Sequence[Bytes], *, timeout: float | None = None) -> list[bytes | None]:
        """Reads several keys, in any regions; returns one value (or ``None``) per key, in order."""
    def batch_put(self, pairs: Pairs, *, timeout: float | None = None) -> None:
        """Writes several ``(key, value)`` pairs (or a mapping).

        Atomic per region, not across regions. If some regions' parts fail,
        :class:`PartialBatch` says exactly which pairs were applied.
        """
    def scan(self, start: Bytes | None = None, end: Bytes | None = None, *, limit: int | None = None, reverse: bool = False, page_size: int = 256, stale: bool = False, timeout: float | None = None) -> Scan:
        """Iterates lazily over the ``(key, value)`` pairs with ``start <= key < end``.

        ``None`` bounds are open. Keys come in order, largest first with ``reverse=True``;
        at most ``limit`` pairs. Pairs are fetched ``page_size`` at a time, each page its
        own request with its own ``timeout``, so the scan as a whole is not a snapshot. An
        invalid range raises :class:`InvalidArgument` here, before any request.
        """
    def status(self, *, timeout: float | None = None) -> ClusterStatus:
        """Returns every node and region (range, epoch, replicas, leader, size) as PD sees them."""
    @property
    def session_id(self) -> int:
        """This client's session id (exactly-once writes); it changes when renewed."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    def close(self) -> None:
        """Closes the client's connections. Later calls raise :class:`InvalidArgument`."""
    def __enter__(self) -> Client:
        """Returns the client itself."""
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Closes the client."""

class Scan(Iterator[tuple[bytes, bytes]]):
    """A lazy iterator over the pairs of :meth:`Client.scan`.

    A failed page raises and leaves the position unchanged: calling ``next`` again retries
    that page.
    """
    _native: _Scanner
    def __init__(self, native: _Scanner) -> None:
        """Wraps a native scanner (use :meth:`Client.scan`)."""
    def __iter__(self) -> Scan:
        """Returns the scan itself."""
    def __next__(self) -> tuple[bytes, bytes]:
        """Returns the next pair, fetching the next page when needed."""
