//! Identifier newtypes. Ids never cross an API as bare integers.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// A storage node. Fixed for the node's lifetime and bound to its certificate.
    NodeId, "n"
);
id_type!(
    /// A region (one Raft group). The same id names different key ranges over time: the
    /// region's identity for routing is the id together with its [`crate::RegionEpoch`].
    RegionId, "r"
);
id_type!(
    /// One replica of a region, hosted on one node. Also the Raft node id inside the group.
    PeerId, "p"
);
id_type!(
    /// A client session, for exactly-once writes.
    SessionId, "s"
);
