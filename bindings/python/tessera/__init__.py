"""Python client of Tessera, a range-sharded, Raft-replicated key-value store.

It wraps the Rust client (``tessera._native``): routing, retries, exactly-once writes,
deadlines and errors are the Rust SDK's. Sync here; asyncio in :mod:`tessera.aio`.

Example, against ``tessera dev --data tessera-data``::

    import tessera

    with tessera.connect(data_dir="tessera-data") as db:
        db.put("greeting", "hello")
        assert db.get("greeting") == b"hello"
        assert db.append("greeting", ", world") == 12
        for key, value in db.scan("a", "z", limit=10):
            print(key, value)

Keys and values are ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (UTF-8); results
are ``bytes``. Every call takes ``timeout=`` (seconds, retries included; default: the
client's, 10 s). Calls release the GIL while they wait and can be interrupted with Ctrl-C.
Clients run on a tokio runtime that does not survive ``os.fork()``: connect in the child.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Deque, Iterator, List, Optional, Sequence, Tuple, Type, Union

from . import _native
from ._common import Bytes, ClusterStatus, NodeStatus, Pairs, PathLike, Peer, RegionStatus, bound, cluster_status, pair_list
from ._common import resolve_target as _resolve_target
from ._errors import (
    AuthError,
    DeadlineExceeded,
    Error,
    InvalidArgument,
    KeyTooLarge,
    PartialBatch,
    ProtocolError,
    Unavailable,
    Undetermined,
    ValueTooLarge,
)

__all__ = [
    "connect",
    "Client",
    "Scan",
    "Bytes",
    "Pairs",
    "ClusterStatus",
    "NodeStatus",
    "RegionStatus",
    "Peer",
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


def connect(
    pd: Union[str, Sequence[str], None] = None,
    *,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    timeout: Optional[float] = None,
    attempt_timeout: Optional[float] = None,
) -> Client:
    """Connects to a Tessera cluster and returns a :class:`Client`.

    Either ``pd`` (one ``host:port`` or several; any that answers will do) with the
    cluster's CA certificate ``ca`` and this client's certificate ``cert`` and private key
    ``key`` (PEM files; the cluster accepts only mutually authenticated TLS), or
    ``data_dir``, the directory of a ``tessera dev --data DIR`` cluster: its PD address and
    dev client certificate are read from there.

    ``timeout`` is the default deadline of every call, retries included (10 s), and also
    bounds connecting; ``attempt_timeout`` the longest wait for one attempt (3 s), so that a
    dead node does not eat the whole deadline.

    Raises :class:`Unavailable` if PD does not answer in time, :class:`AuthError` for
    unusable TLS files, :class:`InvalidArgument` (code ``"Config"``) for a bad configuration.
    """
    t = _resolve_target(pd, ca, cert, key, data_dir)
    native = _native.connect(
        list(t.pd), t.ca, t.cert, t.key, timeout=timeout, attempt_timeout=attempt_timeout
    )
    return Client(native)


class Client:
    """A connection to a Tessera cluster; make one with :func:`connect`.

    Thread-safe: share one client between threads (each call releases the GIL while it
    waits). All calls share the connections, the routing cache and the client's session.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, native: _native.NativeClient) -> None:
        """Wraps a connected native client (use :func:`connect`)."""
        self._native = native

    def get(self, key: Bytes, *, stale: bool = False, timeout: Optional[float] = None) -> Optional[bytes]:
        """Returns the value of ``key``, or ``None`` if it is absent.

        Linearizable by default; ``stale=True`` reads from any replica, which may miss the
        most recent writes but works with a minority of replicas up.
        """
        return self._native.get(key, stale=stale, timeout=timeout)

    def put(self, key: Bytes, value: Bytes, *, timeout: Optional[float] = None) -> None:
        """Sets ``key`` to ``value``. Applied exactly once, even when retried."""
        self._native.put(key, value, timeout=timeout)

    def delete(self, key: Bytes, *, timeout: Optional[float] = None) -> bool:
        """Removes ``key``; returns whether it existed."""
        return self._native.delete(key, timeout=timeout)

    def append(self, key: Bytes, value: Bytes, *, timeout: Optional[float] = None) -> int:
        """Appends ``value`` to the value of ``key`` (an absent key acts as empty); returns the
        new length in bytes. Applied exactly once, even when retried."""
        return self._native.append(key, value, timeout=timeout)

    def compare_and_swap(
        self, key: Bytes, expected: Optional[Bytes], new: Optional[Bytes], *, timeout: Optional[float] = None
    ) -> bool:
        """Sets ``key`` to ``new`` if its current value is ``expected``; returns whether it did.

        ``expected=None`` means "``key`` is absent"; ``new=None`` deletes the key.
        """
        return self._native.compare_and_swap(key, expected, new, timeout=timeout)

    def batch_get(self, keys: Sequence[Bytes], *, timeout: Optional[float] = None) -> List[Optional[bytes]]:
        """Reads several keys, in any regions; returns one value (or ``None``) per key, in order."""
        return self._native.batch_get(list(keys), timeout=timeout)

    def batch_put(self, pairs: Pairs, *, timeout: Optional[float] = None) -> None:
        """Writes several ``(key, value)`` pairs (or a mapping).

        Atomic per region, not across regions. If some regions' parts fail,
        :class:`PartialBatch` says exactly which pairs were applied.
        """
        self._native.batch_put(pair_list(pairs), timeout=timeout)

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
        """Iterates lazily over the ``(key, value)`` pairs with ``start <= key < end``.

        ``None`` bounds are open. Keys come in order, largest first with ``reverse=True``;
        at most ``limit`` pairs. Pairs are fetched ``page_size`` at a time, each page its
        own request with its own ``timeout``, so the scan as a whole is not a snapshot. An
        invalid range raises :class:`InvalidArgument` here, before any request.
        """
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

    def status(self, *, timeout: Optional[float] = None) -> ClusterStatus:
        """Returns every node and region (range, epoch, replicas, leader, size) as PD sees them."""
        return cluster_status(self._native.status(timeout=timeout))

    @property
    def session_id(self) -> int:
        """This client's session id (exactly-once writes); it changes when renewed."""
        return self._native.session_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def close(self) -> None:
        """Closes the client's connections. Later calls raise :class:`InvalidArgument`."""
        self._native.close()

    def __enter__(self) -> Client:
        """Returns the client itself."""
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Closes the client."""
        self.close()

    def __repr__(self) -> str:
        """The client and whether it is closed."""
        return f"<tessera.Client {'closed' if self.closed else 'open'}>"


class Scan(Iterator[Tuple[bytes, bytes]]):
    """A lazy iterator over the pairs of :meth:`Client.scan`.

    A failed page raises and leaves the position unchanged: calling ``next`` again retries
    that page.
    """

    def __init__(self, native: _native.Scanner) -> None:
        """Wraps a native scanner (use :meth:`Client.scan`)."""
        self._native = native
        self._buffer: Deque[Tuple[bytes, bytes]] = deque()

    def __iter__(self) -> Scan:
        """Returns the scan itself."""
        return self

    def __next__(self) -> Tuple[bytes, bytes]:
        """Returns the next pair, fetching the next page when needed."""
        while not self._buffer:
            page = self._native.next_page()
            if page is None:
                raise StopIteration
            self._buffer.extend(page)
        return self._buffer.popleft()
