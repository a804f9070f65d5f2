//! Randomness for challenges and magic numbers, injectable for deterministic tests.

use sha1::{Digest, Sha1};

/// A SHA-1 counter-mode generator over a 32-byte seed. Seeded from the OS by
/// [`Entropy::from_os`]; tests seed it with fixed bytes.
#[derive(Clone)]
pub(crate) struct Entropy {
    seed: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy(***)")
    }
}

impl Entropy {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        Entropy { seed, counter: 0 }
    }

    /// Seeds from the operating system.
    ///
    /// # Panics
    ///
    /// When the OS random source fails. There is no weaker fallback (a seed
    /// from the clock would make challenges and magic numbers predictable);
    /// the I/O layer draws its seeds itself and reports such a failure as an
    /// error (`tunnel::call`), so only the sans-IO convenience constructors
    /// (`LoginClient::new`, `LoginServer::new`, ...) can reach this.
    pub(crate) fn from_os() -> Self {
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            panic!(
                "the OS random source failed ({e}): refusing to run PPP with a predictable seed"
            );
        }
        Entropy::from_seed(seed)
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(20) {
            let mut h = Sha1::new();
            h.update(self.seed);
            h.update(self.counter.to_le_bytes());
            self.counter = self.counter.wrapping_add(1);
            let d = h.finalize();
            chunk.copy_from_slice(&d[..chunk.len()]);
        }
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
}
