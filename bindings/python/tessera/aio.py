"""The asyncio client: :func:`connect` and :class:`Client`, with the same methods as the sync
client (:mod:`tessera`) as coroutines, ``async for`` over scans and ``async with``.

Example::

    import asyncio
    import tessera.aio

    async def main() -> None:
        async with tessera.aio.connect(data_dir="tessera-data") as db:
            await db.put("greeting", "hello")
            print(await db.get("greeting"))
            async for key, value in db.scan("a", "z"):
                print(key, value)

    asyncio.run(main())

Calls run on a tokio runtime shared by every client; the event loop only awaits them.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Any, AsyncIterator, Deque, Generator, List, Optional, Sequence, Tuple, Type, Union

from . import _native
from ._common import Bytes, ClusterStatus, Pairs, PathLike, bound, cluster_status, pair_list
from ._common import resolve_target as _resolve_target

__all__ = ["connect", "Client", "Scan", "Connecting"]


def connect(
    pd: Union[str, Sequence[str], None] = None,
    *,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    timeout: Optional[float] = None,
    attempt_timeout: Optional[float] = None,
) -> Connecting:
    """Connects to a Tessera cluster: ``await`` it for a :class:`Client`, or use it in
    ``async with``, which closes the client at the end.

    The arguments are those of :func:`tessera.connect`.
    """
    t = _resolve_target(pd, ca, cert, key, data_dir)
    return Connecting(list(t.pd), t.ca, t.cert, t.key, timeout, attempt_timeout)


class Connecting:
    """A connection under way: awaitable (giving a :class:`Client`) and an async context
    manager (giving the client and closing it on exit)."""

    def __init__(
        self,
        pd: List[str],
        ca: str,
        cert: str,
        key: str,
        timeout: Optional[float],
        attempt_timeout: Optional[float],
    ) -> None:
        """Records the arguments; the connection starts when awaited (use :func:`connect`)."""
        self._args = (pd, ca, cert, key)
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._client: Optional[Client] = None

    async def _connect(self) -> Client:
        pd, ca, cert, key = self._args
        native = await _native.connect_async(
            pd, ca, cert, key, timeout=self._timeout, attempt_timeout=self._attempt_timeout
        )
        return Client(native)

    def __await__(self) -> Generator[Any, None, Client]:
        """Connects and returns the client."""
        return self._connect().__await__()

    async def __aenter__(self) -> Client:
        """Connects and returns the client."""
        self._client = await self._connect()
        return self._client

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Closes the client."""
        if self._client is not None:
            await self._client.close()


class Client:
    """An asyncio connection to a Tessera cluster; make one with :func:`connect`.

    Safe to share between tasks (and threads); all calls share the connections, the routing
    cache and the session. Cancelling a call drops it: a write in flight may or may not have
    been applied.
    """

    def __init__(self, native: _native.NativeClient) -> None:
        """Wraps a connected native client (use :func:`connect`)."""
        self._native = native

    async def get(self, key: Bytes, *, stale: bool = False, timeout: Optional[float] = None) -> Optional[bytes]:
        """Returns the value of ``key``, or ``None`` if it is absent (``stale=True``: from any
        replica, possibly behind)."""
        return await self._native.get_async(key, stale=stale, timeout=timeout)

    async def put(self, key: Bytes, value: Bytes, *, timeout: Optional[float] = None) -> None:
        """Sets ``key`` to ``value``. Applied exactly once, even when retried."""
        await self._native.put_async(key, value, timeout=timeout)

    async def delete(self, key: Bytes, *, timeout: Optional[float] = None) -> bool:
        """Removes ``key``; returns whether it existed."""
        return await self._native.delete_async(key, timeout=timeout)

    async def append(self, key: Bytes, value: Bytes, *, timeout: Optional[float] = None) -> int:
        """Appends ``value`` to the value of ``key`` (absent: empty); returns the new length."""
        return await self._native.append_async(key, value, timeout=timeout)

    async def compare_and_swap(
        self, key: Bytes, expected: Optional[Bytes], new: Optional[Bytes], *, timeout: Optional[float] = None
    ) -> bool:
        """Sets ``key`` to ``new`` if its value is ``expected`` (``None``: absent); returns
        whether it did. ``new=None`` deletes the key."""
        return await self._native.compare_and_swap_async(key, expected, new, timeout=timeout)

    async def batch_get(self, keys: Sequence[Bytes], *, timeout: Optional[float] = None) -> List[Optional[bytes]]:
        """Reads several keys, in any regions; one value (or ``None``) per key, in order."""
        return await self._native.batch_get_async(list(keys), timeout=timeout)

    async def batch_put(self, pairs: Pairs, *, timeout: Optional[float] = None) -> None:
        """Writes several pairs; atomic per region. :class:`tessera.PartialBatch` says which
        pairs were applied when some regions' parts fail."""
        await self._native.batch_put_async(pair_list(pairs), timeout=timeout)

    def scan(
        self,
        start: Optional[Bytes] = None,
        end: Optional[Bytes] = None,
        *,
        limit: Optional[int] = None,
        reverse: bool = False,
        page_size: int = 256,
        stale: bool = False,
        timeout: Optional[float] = None,
    ) -> Scan:
        """Returns an async iterator over the pairs with ``start <= key < end`` (``None``:
        open), in key order (``reverse=True``: largest first), at most ``limit``, fetched
        ``page_size`` at a time, each page with its own ``timeout``. Use ``async for``."""
        native = self._native.scan(
            bound(start),
            bound(end),
            limit=limit,
            reverse=reverse,
            page_size=page_size,
            stale=stale,
            timeout=timeout,
        )
        return Scan(native)

    async def status(self, *, timeout: Optional[float] = None) -> ClusterStatus:
        """Returns every node and region as PD sees them."""
        return cluster_status(await self._native.status_async(timeout=timeout))

    @property
    def session_id(self) -> int:
        """This client's session id (exactly-once writes); it changes when renewed."""
        return self._native.session_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    async def close(self) -> None:
        """Closes the client's connections. Later calls raise :class:`tessera.InvalidArgument`."""
        self._native.close()

    async def __aenter__(self) -> Client:
        """Returns the client itself."""
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Closes the client."""
        await self.close()

    def __repr__(self) -> str:
        """The client and whether it is closed."""
        return f"<tessera.aio.Client {'closed' if self.closed else 'open'}>"


class Scan(AsyncIterator[Tuple[bytes, bytes]]):
    """An async iterator over the pairs of :meth:`Client.scan`. A failed page raises and
    leaves the position unchanged, so iterating again retries it."""

    def __init__(self, native: _native.Scanner) -> None:
        """Wraps a native scanner (use :meth:`Client.scan`)."""
        self._native = native
        self._buffer: Deque[Tuple[bytes, bytes]] = deque()

    def __aiter__(self) -> Scan:
        """Returns the scan itself."""
        return self

    async def __anext__(self) -> Tuple[bytes, bytes]:
        """Returns the next pair, fetching the next page when needed."""
        while not self._buffer:
            page = await self._native.next_page_async()
            if page is None:
                raise StopAsyncIteration
            self._buffer.extend(page)
        return self._buffer.popleft()
