"""What the sync and async clients share: argument types, finding a dev cluster, status rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from ._errors import InvalidArgument

#: A key or value: ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (encoded as UTF-8).
Bytes = Union[bytes, bytearray, memoryview, str]

#: The pairs of a ``batch_put``: an iterable of ``(key, value)``, or a mapping (keyed by
#: ``str`` or ``bytes``: the hashable key types).
Pairs = Union[Iterable[Tuple[Bytes, Bytes]], Mapping[str, Bytes], Mapping[bytes, Bytes]]

#: A file system path.
PathLike = Union[str, "os.PathLike[str]"]

#: Name of the client certificate ``tessera dev`` issues (``certs/client-dev.pem``).
DEV_CLIENT = "dev"


@dataclass(frozen=True)
class Target:
    """Where to connect and with which TLS files."""

    pd: Tuple[str, ...]
    ca: str
    cert: str
    key: str


def _path(p: PathLike) -> str:
    return os.fspath(p)


def resolve_target(
    pd: Union[str, Sequence[str], None],
    ca: Optional[PathLike],
    cert: Optional[PathLike],
    key: Optional[PathLike],
    data_dir: Optional[PathLike],
) -> Target:
    """The PD addresses and TLS files from ``connect``'s arguments.

    With ``data_dir`` (a ``tessera dev --data DIR`` directory): PD's address from
    ``DIR/cluster.addrs`` and the dev client's certificate from ``DIR/certs``; any of
    ``pd``, ``ca``, ``cert``, ``key`` given as well overrides what is found there.
    """
    if data_dir is not None:
        root = _path(data_dir)
        certs = os.path.join(root, "certs")
        if pd is None:
            pd = [_dev_pd_address(root)]
        ca = ca if ca is not None else os.path.join(certs, "ca.pem")
        cert = cert if cert is not None else os.path.join(certs, f"client-{DEV_CLIENT}.pem")
        key = key if key is not None else os.path.join(certs, f"client-{DEV_CLIENT}-key.pem")
    if pd is None or ca is None or cert is None or key is None:
        raise InvalidArgument(
            "connect needs data_dir= (a `tessera dev` directory) or all of pd=, ca=, cert= and key=", code="Config"
        )
    endpoints = (pd,) if isinstance(pd, str) else tuple(pd)
    return Target(pd=endpoints, ca=_path(ca), cert=_path(cert), key=_path(key))


def _dev_pd_address(root: str) -> str:
    """PD's address as ``tessera dev`` recorded it in ``cluster.addrs`` (``name=addr`` lines)."""
    path = os.path.join(root, "cluster.addrs")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InvalidArgument(
            f"{path} not found: is `tessera dev --data {root}` running (or was it ever started)?", code="Config"
        ) from None
    for line in lines:
        name, sep, addr = line.partition("=")
        if sep and name.strip() == "pd":
            return addr.strip()
    raise InvalidArgument(f"{path} names no PD address", code="Config")


def pair_list(pairs: Pairs) -> list[Tuple[Bytes, Bytes]]:
    """``batch_put``'s pairs as a list."""
    if isinstance(pairs, Mapping):
        return list(pairs.items())
    return [(k, v) for k, v in pairs]


def bound(key: Optional[Bytes]) -> Bytes:
    """A scan bound: ``None`` is the open end (the empty key)."""
    return b"" if key is None else key


@dataclass(frozen=True)
class Peer:
    """A replica of a region: its id within the region's Raft group, and its node."""

    id: int
    node_id: int


@dataclass(frozen=True)
class NodeStatus:
    """A storage node as PD last heard from it."""

    id: int
    address: str
    #: ``"up"`` or ``"down"``.
    state: str
    region_count: int
    leader_count: int
    used_bytes: int
    capacity_bytes: int
    last_heartbeat_ms_ago: int
    draining: bool
    #: Why its storage fail-stopped (a full disk, a failed sync), as it reported; it is
    #: then ``"down"`` until restarted. ``None`` for a healthy node.
    storage_failure: Optional[str] = None


@dataclass(frozen=True)
class RegionStatus:
    """A region: its key range ``[start, end)`` (empty ``end``: unbounded), epoch and replicas."""

    id: int
    start: bytes
    end: bytes
    conf_ver: int
    version: int
    voters: Tuple[Peer, ...]
    learners: Tuple[Peer, ...]
    leader: Optional[Peer]
    approximate_size: int
    approximate_keys: int


@dataclass(frozen=True)
class ClusterStatus:
    """Every node and every region, as PD sees them."""

    nodes: Tuple[NodeStatus, ...]
    regions: Tuple[RegionStatus, ...]


def cluster_status(rows: Tuple[Sequence[Any], Sequence[Any]]) -> ClusterStatus:
    """A :class:`ClusterStatus` from the native module's rows."""
    nodes, regions = rows
    return ClusterStatus(
        nodes=tuple(NodeStatus(*n) for n in nodes),
        regions=tuple(
            RegionStatus(
                id=r[0],
                start=r[1],
                end=r[2],
                conf_ver=r[3][0],
                version=r[3][1],
                voters=tuple(Peer(*p) for p in r[4]),
                learners=tuple(Peer(*p) for p in r[5]),
                leader=None if r[6] is None else Peer(*r[6]),
                approximate_size=r[7],
                approximate_keys=r[8],
            )
            for r in regions
        ),
    )
