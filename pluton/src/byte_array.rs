//! Fixed-size byte arrays of any length that serialise as raw bytes with postcard.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `[u8; N]` that serde handles for any `N` (serde's own arrays stop at 32).
///
/// Serialised as a tuple of `N` bytes, which postcard writes as exactly `N` raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteArray<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for ByteArray<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl<const N: usize> From<[u8; N]> for ByteArray<N> {
    fn from(bytes: [u8; N]) -> Self {
        Self(bytes)
    }
}

impl<const N: usize> zeroize::Zeroize for ByteArray<N> {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> Serialize for ByteArray<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de, const N: usize> Deserialize<'de> for ByteArray<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArrayVisitor<const M: usize>(PhantomData<[u8; M]>);

        impl<'de, const M: usize> Visitor<'de> for ArrayVisitor<M> {
            type Value = ByteArray<M>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{M} bytes")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut bytes = [0u8; M];
                for (index, slot) in bytes.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(index, &self))?;
                }
                Ok(ByteArray(bytes))
            }
        }

        deserializer.deserialize_tuple(N, ArrayVisitor::<N>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcard_writes_raw_bytes() {
        let value = ByteArray([7u8; 65]);
        let mut buffer = [0u8; 80];
        let encoded = postcard::to_slice(&value, &mut buffer).expect("encode");
        assert_eq!(encoded.len(), 65);
        assert!(encoded.iter().all(|&byte| byte == 7));
        let decoded: ByteArray<65> = postcard::from_bytes(encoded).expect("decode");
        assert_eq!(decoded, value);
        assert!(postcard::from_bytes::<ByteArray<65>>(&encoded[..64]).is_err());
    }
}
