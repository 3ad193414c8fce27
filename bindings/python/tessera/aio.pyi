from ._native import NativeClient as _NativeClient, Scanner as _Scanner
from ._common import Bytes, ClusterStatus, Pairs, PathLike
from types import TracebackType
from typing import Any, AsyncIterator, Generator, Sequence

__all__ = ['connect', 'Connecting', 'Client', 'Scan']

def connect(pd: str | Sequence[str] | None = None, *, ca: PathLike | None = None, cert: PathLike | None = None, key: PathLike | None = None, data_dir: PathLike | None = None, timeout: float | None = None, attempt_timeout: float | None = None) -> Connecting:
    """Connects to a Tessera cluster: ``await`` it for a :class:`Client`, or use it in
    ``async with``, which closes the client at the end.

    The arguments are those of :func:`tessera.connect`.
    """

class Connecting:
    """A connection under way: awaitable (giving a :class:`Client`) and an async context
    manager (giving the client and closing it on exit)."""
    def __init__(self, pd: list[str], ca: str, cert: str, key: str, timeout: float | None, attempt_timeout: float | None) -> None:
        """Records the arguments; the connection starts when awaited (use :func:`connect`)."""
    def __await__(self) -> Generator[Any, None, Client]:
        """Connects and returns the client."""
    async def __aenter__(self) -> Client:
        """Connects and returns the client."""
    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Closes the client."""

class Client:
    """An asyncio connection to a Tessera cluster; make one with :func:`connect`.

    Safe to share between tasks (and threads); all calls share the connections, the routing
    cache and the session. Cancelling a call drops it: a write in flight may or may not have
    been applied.
    """
    _native: _NativeClient
    def __init__(self, native: _NativeClient) -> None:
        """Wraps a connected native client (use :func:`connect`)."""
    async def get(self, key: Bytes, *, stale: bool = False, timeout: float | None = None) -> bytes | None:
        """Returns the value of ``key``, or ``None`` if it is absent (``stale=True``: from any
        replica, possibly behind)."""
    async def put(self, key: Bytes, value: Bytes, *, timeout: float | None = None) -> None:
        """Sets ``key`` to ``value``. Applied exactly once, even when retried."""
    async def delete(self, key: Bytes, *, timeout: float | None = None) -> bool:
        """Removes ``key``; returns whether it existed."""
    async def append(self, key: Bytes, value: Bytes, *, timeout: float | None = None) -> int:
        """Appends ``value`` to the value of ``key`` (absent: empty); returns the new length."""
    async def compare_and_swap(self, key: Bytes, expected: Bytes | None, new: Bytes | None, *, timeout: float | None = None) -> bool:
        """Sets ``key`` to ``new`` if its value is ``expected`` (``None``: absent); returns
        whether it did. ``new=None`` deletes the key."""
    async def batch_get(self, keys: Sequence[Bytes], *, timeout: float | None = None) -> list[bytes | None]:
        """Reads several keys, in any regions; one value (or ``None``) per key, in order."""
    async def batch_put(self, pairs: Pairs, *, timeout: float | None = None) -> None:
        """Writes several pairs; atomic per region. :class:`tessera.PartialBatch` says which
        pairs were applied when some regions' parts fail."""
    def scan(self, start: Bytes | None = None, end: Bytes | None = None, *, limit: int | None = None, reverse: bool = False, page_size: int = 256, stale: bool = False, timeout: float | None = None) -> Scan:
        """Returns an async iterator over the pairs with ``start <= key < end`` (``None``:
        open), in key order (``reverse=True``: largest first), at most ``limit``, fetched
        ``page_size`` at a time, each page with its own ``timeout``. Use ``async for``."""
    async def status(self, *, timeout: float | None = None) -> ClusterStatus:
        """Returns every node and region as PD sees them."""
    @property
    def session_id(self) -> int:
        """This client's session id (exactly-once writes); it changes when renewed."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    async def close(self) -> None:
        """Closes the client's connections. Later calls raise :class:`tessera.InvalidArgument`."""
    async def __aenter__(self) -> Client:
        """Returns the client itself."""
    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Closes the client."""

class Scan(AsyncIterator[tuple[bytes, bytes]]):
    """An async iterator over the pairs of :meth:`Client.scan`. A failed page raises and
    leaves the position unchanged, so iterating again retries it."""
    _native: _Scanner
    def __init__(self, native: _Scanner) -> None:
        """Wraps a native scanner (use :meth:`Client.scan`)."""
    def __aiter__(self) -> Scan:
        """Returns the scan itself."""
    async def __anext__(self) -> tuple[bytes, bytes]:
        """Returns the next pair, fetching the next page when needed."""
