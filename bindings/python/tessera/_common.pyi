import os
from ._errors import InvalidArgument as InvalidArgument
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

Bytes = bytes | bytearray | memoryview | str
Pairs = Iterable[tuple[Bytes, Bytes]] | Mapping[str, Bytes] | Mapping[bytes, Bytes]
PathLike = str | os.PathLike[str]
DEV_CLIENT: str

@dataclass(frozen=True)
class Target:
    """Where to connect and with which TLS files."""
    pd: tuple[str, ...]
    ca: str
    cert: str
    key: str

def resolve_target(pd: str | Sequence[str] | None, ca: PathLike | None, cert: PathLike | None, key: PathLike | None, data_dir: PathLike | None) -> Target:
    """The PD addresses and TLS files from ``connect``'s arguments.

    With ``data_dir`` (a ``tessera dev --data DIR`` directory): PD's address from
    ``DIR/cluster.addrs`` and the dev client's certificate from ``DIR/certs``; any of
    ``pd``, ``ca``, ``cert``, ``key`` given as well overrides what is found there.
    """
def pair_list(pairs: Pairs) -> list[tuple[Bytes, Bytes]]:
    """``batch_put``'s pairs as a list."""
def bound(key: Bytes | None) -> Bytes:
    """A scan bound: ``None`` is the open end (the empty key)."""

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
    state: str
    region_count: int
    leader_count: int
    used_bytes: int
    capacity_bytes: int
    last_heartbeat_ms_ago: int
    draining: bool
    storage_failure: str | None = ...

@dataclass(frozen=True)
class RegionStatus:
    """A region: its key range ``[start, end)`` (empty ``end``: unbounded), epoch and replicas."""
    id: int
    start: bytes
    end: bytes
    conf_ver: int
    version: int
    voters: tuple[Peer, ...]
    learners: tuple[Peer, ...]
    leader: Peer | None
    approximate_size: int
    approximate_keys: int

@dataclass(frozen=True)
class ClusterStatus:
    """Every node and every region, as PD sees them."""
    nodes: tuple[NodeStatus, ...]
    regions: tuple[RegionStatus, ...]

def cluster_status(rows: tuple[Sequence[Any], Sequence[Any]]) -> ClusterStatus:
    """A :class:`ClusterStatus` from the native module's rows."""
