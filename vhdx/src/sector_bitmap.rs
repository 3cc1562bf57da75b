//! Sector bitmaps (MS-VHDX 2.5.2): one bit per logical sector, LSB first;
//! 1 = the sector is in this file, 0 = read it from the parent.

/// Value of bit `i`.
pub fn bit(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] >> (i % 8) & 1 != 0
}

/// Sets bit `i` to `v`.
pub fn set_bit(bits: &mut [u8], i: u64, v: bool) {
    let byte = &mut bits[(i / 8) as usize];
    if v {
        *byte |= 1 << (i % 8);
    } else {
        *byte &= !(1 << (i % 8));
    }
}

/// Sets bits `start..end` to `v`, whole bytes at a time where it can.
pub fn set_range(bits: &mut [u8], start: u64, end: u64, v: bool) {
    let mut i = start;
    while i < end && !i.is_multiple_of(8) {
        set_bit(bits, i, v);
        i += 1;
    }
    let whole_end = i + (end - i) / 8 * 8;
    if whole_end > i {
        bits[(i / 8) as usize..(whole_end / 8) as usize].fill(if v { 0xFF } else { 0 });
        i = whole_end;
    }
    while i < end {
        set_bit(bits, i, v);
        i += 1;
    }
}

/// The value of bit `start` and how many bits from `start` (stopping at
/// `end`) share it. Skips whole bytes of equal bits.
pub fn run_at(bits: &[u8], start: u64, end: u64) -> (bool, u64) {
    let v = bit(bits, start);
    let same = if v { 0xFF } else { 0x00 };
    let mut i = start + 1;
    while i < end {
        if i.is_multiple_of(8) && end - i >= 8 && bits[(i / 8) as usize] == same {
            i += 8;
            continue;
        }
        if bit(bits, i) != v {
            break;
        }
        i += 1;
    }
    (v, i - start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn runs_cover_the_range_and_agree_with_bits(bits in proptest::collection::vec(any::<u8>(), 1..64), a in 0u64..512, b in 0u64..512) {
            let n = bits.len() as u64 * 8;
            let (start, end) = (a.min(b) % n, (a.max(b) % n) + 1);
            prop_assume!(start < end);
            let mut i = start;
            while i < end {
                let (v, len) = run_at(&bits, i, end);
                prop_assert!(len >= 1 && i + len <= end);
                for j in i..i + len {
                    prop_assert_eq!(bit(&bits, j), v);
                }
                if i + len < end {
                    prop_assert_ne!(bit(&bits, i + len), v);
                }
                i += len;
            }
        }
    }

    proptest! {
        #[test]
        fn set_range_matches_bit_by_bit(a in 0u64..256, b in 0u64..256, v: bool, fill: u8) {
            let (start, end) = (a.min(b), a.max(b));
            let mut fast = vec![fill; 32];
            let mut slow = fast.clone();
            set_range(&mut fast, start, end, v);
            for i in start..end {
                set_bit(&mut slow, i, v);
            }
            prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn set_and_read_bits() {
        let mut b = vec![0u8; 4];
        set_bit(&mut b, 9, true);
        assert_eq!(b[1], 2);
        assert!(bit(&b, 9));
        assert_eq!(run_at(&b, 0, 32), (false, 9));
        assert_eq!(run_at(&b, 9, 32), (true, 1));
        set_bit(&mut b, 9, false);
        assert_eq!(run_at(&b, 0, 32), (false, 32));
    }
}
