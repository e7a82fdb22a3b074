//! FNV-1a, a quick hasher for the small maps a pooled transaction looks up: a client's
//! statement names (its own map: a client choosing colliding names slows only itself) and the
//! ids of statements prepared on a server connection (already hashes of their text). The
//! standard SipHash costs a few hundred instructions per lookup there.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub struct Fnv(u64);

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(OFFSET)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }

    /// A whole word at a time: the ids are hashes already.
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(PRIME);
        self.0 ^= self.0 >> 32;
    }
}

pub type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FnvSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn known_values_and_a_map_that_works() {
        let build = BuildHasherDefault::<Fnv>::default();
        let hash = |b: &[u8]| {
            let mut h = build.build_hasher();
            h.write(b);
            h.finish()
        };
        // FNV-1a 64 reference values.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut m: FnvMap<u64, usize> = FnvMap::default();
        for i in 0..1000u64 {
            m.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i as usize);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get(&7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)), Some(&7));
    }
}
