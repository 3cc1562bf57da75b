//! RamBlock payloads (research note §4.3): a value of exactly 1 MiB is 256
//! raw pages; a shorter one is a stream of u32 tokens, one group per page:
//!
//! | token | then | output |
//! |---|---|---|
//! | 0xFFFFFFFF | — | end |
//! | 0xFFFFFFFE | 8-byte pattern | one page of the pattern |
//! | 0xFFFFFFFD | 8-byte pattern, u32 count | `count` pages of the pattern |
//! | 0xFFFFFFFC | u32 out_len, u32 in_len, data | `out_len` bytes: raw when the lengths match, else XPRESS |
//! | 4096 | 4096 bytes | a raw page |
//! | 1..4095 | n bytes | one page, XPRESS-compressed |
//!
//! The format comes from two independent third-party readers and has not
//! been checked against a real compressed file (none is public).

use crate::{lznt1, xpress};

/// How single compressed pages are encoded. Both readers of the format
/// that exist say XPRESS (plain LZ77); an older code path of one of them
/// used LZNT1, so that can be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageCodec {
    #[default]
    Xpress,
    Lznt1,
}

fn page_decode(codec: PageCodec, data: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match codec {
        PageCodec::Xpress => xpress::decompress(data, max, out).map_err(|e| e.to_string()),
        PageCodec::Lznt1 => lznt1::decompress(data, max, out).map_err(|e| e.to_string()),
    }
}

pub const BLOCK_LEN: usize = 1 << 20;
pub const PAGE: usize = 4096;
pub const PAGES_PER_BLOCK: usize = BLOCK_LEN / PAGE;

pub const T_END: u32 = 0xFFFF_FFFF;
pub const T_PATTERN_PAGE: u32 = 0xFFFF_FFFE;
pub const T_PATTERN_RUN: u32 = 0xFFFF_FFFD;
pub const T_SPAN: u32 = 0xFFFF_FFFC;

/// Why a compressed RamBlock does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("compressed RamBlock: stream ends inside a token at byte {0}")]
    Truncated(usize),
    #[error("compressed RamBlock: token {token:#010x} at byte {at} is not known")]
    BadToken { at: usize, token: u32 },
    #[error("compressed RamBlock: page at byte {at}: {reason}")]
    Page { at: usize, reason: String },
    #[error("compressed RamBlock: decodes to {got} bytes instead of 1 MiB")]
    WrongLength { got: usize },
}

/// Decodes a compressed RamBlock into `out` (exactly 1 MiB), pages as XPRESS.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), BlockError> {
    decode_with(PageCodec::Xpress, input, out)
}

/// Decodes a compressed RamBlock with pages in `codec`.
pub fn decode_with(codec: PageCodec, input: &[u8], out: &mut Vec<u8>) -> Result<(), BlockError> {
    out.clear();
    out.reserve(BLOCK_LEN);
    let mut pos = 0usize;
    let mut page = Vec::with_capacity(PAGE);
    let u32_at = |pos: usize| -> Result<u32, BlockError> {
        let b = input.get(pos..pos + 4).ok_or(BlockError::Truncated(pos))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let room = |out: &Vec<u8>, n: usize| {
        if out.len() + n > BLOCK_LEN {
            Err(BlockError::WrongLength { got: out.len() + n })
        } else {
            Ok(())
        }
    };
    while pos < input.len() {
        let at = pos;
        let t = u32_at(pos)?;
        pos += 4;
        match t {
            T_END => break,
            T_PATTERN_PAGE | T_PATTERN_RUN => {
                let pat = input
                    .get(pos..pos + 8)
                    .ok_or(BlockError::Truncated(pos))?
                    .to_vec();
                pos += 8;
                let count = if t == T_PATTERN_RUN {
                    let c = u32_at(pos)? as usize;
                    pos += 4;
                    c
                } else {
                    1
                };
                room(out, count.saturating_mul(PAGE))?;
                for _ in 0..count * (PAGE / 8) {
                    out.extend_from_slice(&pat);
                }
            }
            T_SPAN => {
                let out_len = u32_at(pos)? as usize;
                let in_len = u32_at(pos + 4)? as usize;
                pos += 8;
                let data = input
                    .get(pos..pos + in_len)
                    .ok_or(BlockError::Truncated(pos))?;
                pos += in_len;
                room(out, out_len)?;
                if in_len == out_len {
                    out.extend_from_slice(data);
                } else {
                    page_decode(codec, data, out_len, &mut page)
                        .map_err(|reason| BlockError::Page { at, reason })?;
                    page.resize(out_len, 0);
                    out.extend_from_slice(&page);
                }
            }
            n if n as usize == PAGE => {
                let data = input
                    .get(pos..pos + PAGE)
                    .ok_or(BlockError::Truncated(pos))?;
                pos += PAGE;
                room(out, PAGE)?;
                out.extend_from_slice(data);
            }
            n if (1..PAGE as u32).contains(&n) => {
                let data = input
                    .get(pos..pos + n as usize)
                    .ok_or(BlockError::Truncated(pos))?;
                pos += n as usize;
                room(out, PAGE)?;
                page_decode(codec, data, PAGE, &mut page)
                    .map_err(|reason| BlockError::Page { at, reason })?;
                // A page that decodes short is padded with zeros.
                page.resize(PAGE, 0);
                out.extend_from_slice(&page);
            }
            token => return Err(BlockError::BadToken { at, token }),
        }
    }
    if out.len() != BLOCK_LEN {
        return Err(BlockError::WrongLength { got: out.len() });
    }
    Ok(())
}
