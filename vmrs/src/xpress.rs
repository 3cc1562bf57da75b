//! Plain LZ77 "XPRESS" decompression (MS-XCA 2.3 and 2.4; Windows
//! compression format 3, no Huffman stage), as used for single 4 KiB pages
//! of compressed RamBlocks.
//!
//! Flags are 32-bit words consumed from the most significant bit: 0 is a
//! literal byte, 1 a match `u16 m` with offset `(m >> 3) + 1` and a length
//! that grows through a shared half-byte, a byte, a u16 and a u32 when the
//! field before it is saturated. A match flag at the very end of the input
//! ends the stream.

/// Why a buffer does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XpressError {
    #[error("XPRESS: input ends inside a {0}")]
    Truncated(&'static str),
    #[error("XPRESS: match at output {at} reaches {offset} bytes back")]
    BadOffset { at: usize, offset: usize },
    #[error("XPRESS: match length field {0} is below the 22 it must exceed")]
    BadLength(u32),
    #[error("XPRESS: output would exceed {0} bytes")]
    TooLong(usize),
}

/// Decompresses `input` into `out` (cleared first), which may hold at most
/// `max_out` bytes.
pub fn decompress(input: &[u8], max_out: usize, out: &mut Vec<u8>) -> Result<(), XpressError> {
    out.clear();
    let mut pos = 0usize;
    let mut flags = 0u32;
    let mut flag_count = 0u32;
    let mut half_byte: Option<usize> = None;
    let byte = |pos: &mut usize, what| -> Result<u8, XpressError> {
        let b = *input.get(*pos).ok_or(XpressError::Truncated(what))?;
        *pos += 1;
        Ok(b)
    };
    let u16_at = |pos: &mut usize, what| -> Result<u16, XpressError> {
        let b = input
            .get(*pos..*pos + 2)
            .ok_or(XpressError::Truncated(what))?;
        *pos += 2;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    loop {
        if flag_count == 0 {
            if pos == input.len() {
                // Every symbol was consumed exactly at a flag boundary.
                return Ok(());
            }
            let b = input
                .get(pos..pos + 4)
                .ok_or(XpressError::Truncated("flag word"))?;
            flags = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            pos += 4;
            flag_count = 32;
        }
        flag_count -= 1;
        if flags & (1 << flag_count) == 0 {
            if pos == input.len() {
                return Ok(());
            }
            if out.len() == max_out {
                return Err(XpressError::TooLong(max_out));
            }
            out.push(input[pos]);
            pos += 1;
            continue;
        }
        if pos == input.len() {
            return Ok(());
        }
        let m = u16_at(&mut pos, "match")?;
        let offset = usize::from(m >> 3) + 1;
        let mut len = u32::from(m & 7);
        if len == 7 {
            len = match half_byte.take() {
                None => {
                    let b = byte(&mut pos, "length half-byte")?;
                    half_byte = Some(pos - 1);
                    u32::from(b & 0x0F)
                }
                Some(at) => u32::from(input[at] >> 4),
            };
            if len == 15 {
                len = u32::from(byte(&mut pos, "length byte")?);
                if len == 255 {
                    len = u32::from(u16_at(&mut pos, "length word")?);
                    if len == 0 {
                        let b = input
                            .get(pos..pos + 4)
                            .ok_or(XpressError::Truncated("length dword"))?;
                        len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        pos += 4;
                    }
                    if len < 15 + 7 {
                        return Err(XpressError::BadLength(len));
                    }
                    len -= 15 + 7;
                }
                len += 15;
            }
            len += 7;
        }
        let len = len as usize + 3;
        if offset > out.len() {
            return Err(XpressError::BadOffset {
                at: out.len(),
                offset,
            });
        }
        if out.len() + len > max_out {
            return Err(XpressError::TooLong(max_out));
        }
        let start = out.len() - offset;
        for i in 0..len {
            let b = out[start + i];
            out.push(b);
        }
    }
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
    fn ms_xca_worked_examples() {
        // MS-XCA 3.1: the alphabet, all literals.
        let mut out = Vec::new();
        let c = hex("3f 00 00 00 61 62 63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70 71 72 73 74 75 76 77 78 79 7a");
        decompress(&c, 1 << 20, &mut out).unwrap();
        assert_eq!(out, b"abcdefghijklmnopqrstuvwxyz");
        // "abc" x 100: three literals and one match of 297 through the
        // half-byte, byte and u16 tiers.
        decompress(
            &hex("ff ff ff 1f 61 62 63 17 00 0f ff 26 01"),
            1 << 20,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"abc".repeat(100));
    }

    #[test]
    fn hostile_inputs_fail_cleanly() {
        let mut out = Vec::new();
        // A match before any output.
        assert!(matches!(
            decompress(&hex("00 00 00 80 08 00"), 4096, &mut out),
            Err(XpressError::BadOffset { .. })
        ));
        // Output past the limit.
        assert_eq!(
            decompress(
                &hex("ff ff ff 1f 61 62 63 17 00 0f ff 26 01"),
                100,
                &mut out
            ),
            Err(XpressError::TooLong(100))
        );
        // Truncated inside a match and a flag word.
        assert!(decompress(&hex("00 00 00 c0 61 17"), 4096, &mut out).is_err());
        assert!(decompress(&hex("00 00"), 4096, &mut out).is_err());
    }
}
