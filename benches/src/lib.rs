//! Benchmarks live in `benches/`; this library holds what they and the
//! examples share. Here: the seeded offset sequences of the write benchmark
//! and the `write_pattern` example, so both tools (and every run) write the
//! same pattern.

pub mod merge_case;

/// SplitMix64: a small, fixed pseudo-random sequence for a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `count` offsets of `len`-byte writes, `len`-aligned and uniformly drawn
/// (with repeats) from `0..disk_size`, in the order `seed` gives.
pub fn random_offsets(count: usize, len: u64, disk_size: u64, seed: u64) -> Vec<u64> {
    let slots = disk_size / len;
    assert!(slots > 0, "disk smaller than one write");
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.next_u64() % slots * len).collect()
}

/// Offsets of `len`-byte writes covering `0..total` in order.
pub fn sequential_offsets(total: u64, len: u64) -> Vec<u64> {
    (0..total / len).map(|i| i * len).collect()
}

/// The fill byte of the `i`-th write (never 0, so every write is visible).
pub fn fill_byte(i: usize) -> u8 {
    (i % 255) as u8 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_fixed_and_aligned() {
        let a = random_offsets(1000, 4096, 1 << 30, 42);
        assert_eq!(a, random_offsets(1000, 4096, 1 << 30, 42));
        assert_ne!(a, random_offsets(1000, 4096, 1 << 30, 43));
        assert!(a.iter().all(|&o| o % 4096 == 0 && o < 1 << 30));
        assert_eq!(
            sequential_offsets(4 << 20, 1 << 20),
            [0, 1 << 20, 2 << 20, 3 << 20]
        );
        assert!((0..1000).all(|i| fill_byte(i) != 0));
    }
}
