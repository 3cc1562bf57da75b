//! LZNT1 decompression (MS-XCA 2.5; Windows compression format 2), an
//! older encoding of RamBlock pages.
//!
//! Chunks of a u16 header (bits 0–11 body length − 1, bits 12–14 the
//! signature 3, bit 15 compressed) and a body; a compressed body is groups
//! of a flag byte (least significant bit first: 0 literal, 1 a u16 word)
//! and eight items. A word splits into a displacement of D high bits and a
//! length of 16 − D low bits, D growing from 4 to 12 with the bytes already
//! written in the chunk.

/// Why a buffer does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lznt1Error {
    #[error("LZNT1: chunk at input {0} ends past the input")]
    Truncated(usize),
    #[error("LZNT1: chunk header {header:#06x} at input {at} has a wrong signature")]
    BadSignature { at: usize, header: u16 },
    #[error("LZNT1: word at input {at} reaches {back} bytes back in a chunk of {have}")]
    BadOffset { at: usize, back: usize, have: usize },
    #[error("LZNT1: a chunk decodes to more than 4096 bytes")]
    ChunkTooLong,
    #[error("LZNT1: output would exceed {0} bytes")]
    TooLong(usize),
}

/// Decompresses `input` into `out` (cleared first), at most `max_out` bytes.
pub fn decompress(input: &[u8], max_out: usize, out: &mut Vec<u8>) -> Result<(), Lznt1Error> {
    out.clear();
    let mut pos = 0usize;
    while pos + 2 <= input.len() {
        let header = u16::from_le_bytes([input[pos], input[pos + 1]]);
        if header == 0 {
            break;
        }
        if (header >> 12) & 7 != 3 {
            return Err(Lznt1Error::BadSignature { at: pos, header });
        }
        let body_len = usize::from(header & 0x0FFF) + 1;
        let body = input
            .get(pos + 2..pos + 2 + body_len)
            .ok_or(Lznt1Error::Truncated(pos))?;
        let chunk_start = out.len();
        if header & 0x8000 == 0 {
            if out.len() + body.len() > max_out {
                return Err(Lznt1Error::TooLong(max_out));
            }
            out.extend_from_slice(body);
        } else {
            let mut i = 0;
            while i < body.len() {
                let flags = body[i];
                i += 1;
                for bit in 0..8 {
                    if i >= body.len() {
                        break;
                    }
                    let have = out.len() - chunk_start;
                    if have >= 4096 {
                        return Err(Lznt1Error::ChunkTooLong);
                    }
                    if flags & (1 << bit) == 0 {
                        if out.len() == max_out {
                            return Err(Lznt1Error::TooLong(max_out));
                        }
                        out.push(body[i]);
                        i += 1;
                        continue;
                    }
                    let at = pos + 2 + i;
                    let w = body.get(i..i + 2).ok_or(Lznt1Error::Truncated(pos))?;
                    let w = u16::from_le_bytes([w[0], w[1]]);
                    i += 2;
                    let mut d = 4u32;
                    let mut u = have.saturating_sub(1);
                    while u >= 16 {
                        u >>= 1;
                        d += 1;
                    }
                    let l = 16 - d;
                    let back = usize::from(w >> l) + 1;
                    let len = usize::from(w & ((1 << l) - 1)) + 3;
                    if back > have {
                        return Err(Lznt1Error::BadOffset { at, back, have });
                    }
                    if out.len() + len > max_out {
                        return Err(Lznt1Error::TooLong(max_out));
                    }
                    if have + len > 4096 {
                        return Err(Lznt1Error::ChunkTooLong);
                    }
                    let start = out.len() - back;
                    for k in 0..len {
                        let b = out[start + k];
                        out.push(b);
                    }
                }
            }
        }
        if out.len() - chunk_start > 4096 {
            return Err(Lznt1Error::ChunkTooLong);
        }
        pos += 2 + body_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn ms_xca_worked_example() {
        // MS-XCA 3.3.
        let plain = b"F# F# G A A G F# E D D E F# F# E E F# F# G A A G F# E D D E F# E D D E E F# D E F# G F# D E F# G F# E D E A F# F# G A A G F# E D D E F# E D D\0";
        let c = hex(
            "38 b0 88 46 23 20 00 20 47 20 41 00 10 a2 47 01 a0 45 20 44 00 08 45 01 50 79 \
             00 c0 45 20 05 24 13 88 05 b4 02 4a 44 ef 03 58 02 8c 09 16 01 48 45 00 be 00 9e 00 04 01 18 90 00",
        );
        let mut out = Vec::new();
        decompress(&c, 1 << 20, &mut out).unwrap();
        assert_eq!(out, plain.to_vec());
    }

    #[test]
    fn stored_chunks_and_hostile_input() {
        let mut c = vec![0xFF, 0x3F]; // stored, 4096 bytes
        c.extend(std::iter::repeat_n(7u8, 4096));
        let mut out = Vec::new();
        decompress(&c, 8192, &mut out).unwrap();
        assert_eq!(out, vec![7u8; 4096]);
        assert!(matches!(
            decompress(&c[..100], 8192, &mut out),
            Err(Lznt1Error::Truncated(0))
        ));
        assert!(matches!(
            decompress(&[0x00, 0x40, 1], 10, &mut out),
            Err(Lznt1Error::BadSignature { .. })
        ));
        // A word reaching before the chunk.
        assert!(matches!(
            decompress(&[0x02, 0xB0, 0x01, 0x00, 0x10], 100, &mut out),
            Err(Lznt1Error::BadOffset { .. })
        ));
    }
}
