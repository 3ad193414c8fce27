//! serde helper for `Vec<(Vec<u8>, Vec<u8>)>`: each key and value as one byte string
//! (`serde_bytes`) instead of a sequence of `u8`. postcard writes the same bytes either way
//! (a length, then the bytes), so this changes CPU cost, not the format.
//!
//! ```ignore
//! #[serde(with = "tessera_wire::byte_pairs")]
//! pairs: Vec<(Vec<u8>, Vec<u8>)>,
//! ```

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserializer, Serializer};

/// Key-value pairs.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(serde::Serialize)]
struct PairRef<'a>(#[serde(with = "serde_bytes")] &'a [u8], #[serde(with = "serde_bytes")] &'a [u8]);

#[derive(serde::Deserialize)]
struct Pair(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Vec<u8>);

/// Serializes pairs of byte strings.
pub fn serialize<S: Serializer>(pairs: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(pairs.len()))?;
    for (k, v) in pairs {
        seq.serialize_element(&PairRef(k, v))?;
    }
    seq.end()
}

/// Deserializes pairs of byte strings.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
    struct PairsVisitor;
    impl<'de> Visitor<'de> for PairsVisitor {
        type Value = Pairs;
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a sequence of (bytes, bytes) pairs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // Never trust a length prefix for an allocation: cap what is reserved up front.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(Pair(k, v)) = seq.next_element()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_seq(PairsVisitor)
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "super")] Vec<(Vec<u8>, Vec<u8>)>);
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Plain(Vec<(Vec<u8>, Vec<u8>)>);

    #[test]
    fn the_encoding_is_the_same_bytes_as_plain_vectors_and_round_trips() {
        let pairs = vec![(b"k1".to_vec(), vec![7u8; 300]), (Vec::new(), Vec::new()), (vec![0xff; 200], b"v".to_vec())];
        let fast = postcard::to_allocvec(&Fast(pairs.clone())).unwrap();
        let plain = postcard::to_allocvec(&Plain(pairs.clone())).unwrap();
        assert_eq!(fast, plain);
        assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap(), Fast(pairs.clone()));
        assert_eq!(postcard::from_bytes::<Plain>(&fast).unwrap(), Plain(pairs));
        // A truncated encoding is an error, not a panic or a huge allocation.
        assert!(postcard::from_bytes::<Fast>(&fast[..fast.len() - 1]).is_err());
        assert!(postcard::from_bytes::<Fast>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
