//! Reference encoders for the tests: plain LZ77 "XPRESS" (MS-XCA 2.3),
//! LZNT1 (MS-XCA 2.5) and the RamBlock page-token stream, written from the
//! specification independently of the decoders under test.
#![allow(dead_code)]

/// Greedy longest match within `max_back` bytes before `i`, at most
/// `max_len` long; (offset, length) with length ≥ 3, or None.
fn best_match(
    data: &[u8],
    start: usize,
    i: usize,
    max_back: usize,
    max_len: usize,
) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let lo = i.saturating_sub(max_back).max(start);
    let limit = max_len.min(data.len() - i);
    if limit < 3 {
        return None;
    }
    for j in (lo..i).rev() {
        let mut l = 0;
        while l < limit && data[j + l] == data[i + l] {
            l += 1;
        }
        if l >= 3 && best.is_none_or(|(_, bl)| l > bl) {
            best = Some((i - j, l));
            if l == limit {
                break;
            }
        }
    }
    best
}

/// Plain LZ77 compression per MS-XCA 2.3.
pub fn xpress_compress(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    let mut flag_pos = 0usize;
    let mut flags: u32 = 0;
    let mut nflags = 0u32;
    let mut half: Option<usize> = None;
    let push_flag =
        |out: &mut Vec<u8>, bit: u32, flags: &mut u32, nflags: &mut u32, flag_pos: &mut usize| {
            *flags = (*flags << 1) | bit;
            *nflags += 1;
            if *nflags == 32 {
                out[*flag_pos..*flag_pos + 4].copy_from_slice(&flags.to_le_bytes());
                *flag_pos = out.len();
                out.extend_from_slice(&[0; 4]);
                *flags = 0;
                *nflags = 0;
            }
        };
    let mut i = 0;
    while i < data.len() {
        match best_match(data, 0, i, 8192, 1 << 20) {
            Some((off, len)) => {
                let l = len - 3;
                let m = ((off - 1) << 3) as u16;
                if l < 7 {
                    out.extend_from_slice(&(m | l as u16).to_le_bytes());
                } else {
                    out.extend_from_slice(&(m | 7).to_le_bytes());
                    let l2 = l - 7;
                    let nib = l2.min(15) as u8;
                    match half.take() {
                        None => {
                            half = Some(out.len());
                            out.push(nib);
                        }
                        Some(p) => out[p] |= nib << 4,
                    }
                    if l2 >= 15 {
                        let l3 = l2 - 15;
                        if l3 < 255 {
                            out.push(l3 as u8);
                        } else {
                            out.push(255);
                            if l < 65536 {
                                out.extend_from_slice(&(l as u16).to_le_bytes());
                            } else {
                                out.extend_from_slice(&0u16.to_le_bytes());
                                out.extend_from_slice(&(l as u32).to_le_bytes());
                            }
                        }
                    }
                }
                i += len;
                // After the symbol: a full flag word is followed by the next.
                push_flag(&mut out, 1, &mut flags, &mut nflags, &mut flag_pos);
            }
            None => {
                out.push(data[i]);
                i += 1;
                push_flag(&mut out, 0, &mut flags, &mut nflags, &mut flag_pos);
            }
        }
    }
    // Unused flag bits are 1s: the decoder reads them as a match at the
    // end of the input and stops.
    let rest = 32 - nflags;
    let word = if rest == 32 {
        u32::MAX
    } else {
        (flags << rest) | ((1u32 << rest) - 1)
    };
    out[flag_pos..flag_pos + 4].copy_from_slice(&word.to_le_bytes());
    out
}

/// LZNT1 compression per MS-XCA 2.5 (4 KiB chunks, stored when
/// compression does not help).
pub fn lznt1_compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(4096) {
        let mut body = Vec::new();
        let mut i = 0;
        while i < chunk.len() {
            let flag_at = body.len();
            body.push(0u8);
            for bit in 0..8 {
                if i >= chunk.len() {
                    break;
                }
                let mut d = 4u32;
                let mut u = i.saturating_sub(1);
                while u >= 16 {
                    u >>= 1;
                    d += 1;
                }
                let l = 16 - d;
                let max_back = (1usize << d).min(i);
                let max_len = (1usize << l) - 1 + 3;
                match best_match(chunk, 0, i, max_back, max_len) {
                    Some((off, len)) => {
                        body[flag_at] |= 1 << bit;
                        let w = (((off - 1) as u16) << l) | (len - 3) as u16;
                        body.extend_from_slice(&w.to_le_bytes());
                        i += len;
                    }
                    None => {
                        body.push(chunk[i]);
                        i += 1;
                    }
                }
            }
        }
        if body.len() < chunk.len() {
            out.extend_from_slice(&((body.len() as u16 - 1) | 0xB000).to_le_bytes());
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(&((chunk.len() as u16 - 1) | 0x3000).to_le_bytes());
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// How the token encoder writes each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStyle {
    /// Pattern pages/runs where a page repeats 8 bytes, else the codec, else raw.
    Auto,
    /// Every page as a span token (raw when it does not compress).
    Span,
    /// Every page raw (token 4096).
    Raw,
}

/// A compressed RamBlock of the 256 pages in `block` (1 MiB), per the
/// token table of the research note §4.3, using `compress` for pages.
pub fn encode_block(
    block: &[u8],
    style: PageStyle,
    compress: &dyn Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    assert_eq!(block.len(), 1 << 20);
    let mut out = Vec::new();
    let pages: Vec<&[u8]> = block.chunks(4096).collect();
    let pattern = |p: &[u8]| -> Option<[u8; 8]> {
        let pat: [u8; 8] = p[..8].try_into().unwrap();
        p.chunks(8).all(|c| c == pat).then_some(pat)
    };
    let mut i = 0;
    while i < pages.len() {
        let p = pages[i];
        if style == PageStyle::Auto {
            if let Some(pat) = pattern(p) {
                let mut n = 1;
                while i + n < pages.len() && pattern(pages[i + n]) == Some(pat) {
                    n += 1;
                }
                if n == 1 {
                    out.extend_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
                    out.extend_from_slice(&pat);
                } else {
                    out.extend_from_slice(&0xFFFF_FFFDu32.to_le_bytes());
                    out.extend_from_slice(&pat);
                    out.extend_from_slice(&(n as u32).to_le_bytes());
                }
                i += n;
                continue;
            }
        }
        let c = compress(p);
        match style {
            PageStyle::Span => {
                out.extend_from_slice(&0xFFFF_FFFCu32.to_le_bytes());
                out.extend_from_slice(&4096u32.to_le_bytes());
                if c.len() < 4096 {
                    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                    out.extend_from_slice(&c);
                } else {
                    out.extend_from_slice(&4096u32.to_le_bytes());
                    out.extend_from_slice(p);
                }
            }
            _ if style == PageStyle::Auto && c.len() < 4096 => {
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(&c);
            }
            _ => {
                out.extend_from_slice(&4096u32.to_le_bytes());
                out.extend_from_slice(p);
            }
        }
        i += 1;
    }
    out.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    out
}

/// SplitMix64.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Memory that compresses somewhat: runs, repeats and noise.
pub fn mixed_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        match rng.below(4) {
            0 => {
                let b = rng.next() as u8;
                let k = rng.below(300) as usize + 1;
                v.extend(std::iter::repeat_n(b, k));
            }
            1 if v.len() > 16 => {
                let back = rng.below(v.len().min(8000) as u64) as usize + 1;
                let k = rng.below(400) as usize + 3;
                let start = v.len() - back;
                for i in 0..k {
                    let b = v[start + i];
                    v.push(b);
                }
            }
            _ => {
                let k = rng.below(64) as usize + 1;
                for _ in 0..k {
                    v.push(rng.next() as u8);
                }
            }
        }
    }
    v.truncate(n);
    v
}
