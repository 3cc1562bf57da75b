//! XPRESS and LZNT1 decoders against reference encoders written here from
//! MS-XCA (proptest round trips over data with runs, repeats and noise,
//! including long matches through every length tier), and the RamBlock
//! token stream with every token kind.

mod common;

use common::Rng;
use common::*;
use proptest::prelude::*;
use vmrs::ram_block::{decode, decode_with, PageCodec};
use vmrs::{lznt1, xpress};

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn xpress_round_trips(seed in any::<u64>(), len in 0usize..12000) {
        let data = mixed_bytes(&mut Rng(seed), len);
        let c = xpress_compress(&data);
        let mut out = Vec::new();
        xpress::decompress(&c, data.len(), &mut out).unwrap();
        prop_assert!(out == data);
    }

    #[test]
    fn lznt1_round_trips(seed in any::<u64>(), len in 0usize..12000) {
        let data = mixed_bytes(&mut Rng(seed), len);
        let c = lznt1_compress(&data);
        let mut out = Vec::new();
        lznt1::decompress(&c, data.len(), &mut out).unwrap();
        prop_assert!(out == data);
    }
}

#[test]
fn xpress_every_length_tier() {
    // Matches of 3..9 (3-bit field), 10..24 (half-byte), 25..279 (byte),
    // 280..65538 (u16) and over 65538 (u32).
    for len in [3usize, 9, 10, 24, 25, 279, 280, 5000, 65538, 65539, 200_000] {
        let mut data = b"xyz".to_vec();
        data.extend(std::iter::repeat_n(b'q', len));
        data.extend_from_slice(b"end");
        let c = xpress_compress(&data);
        let mut out = Vec::new();
        xpress::decompress(&c, data.len(), &mut out).unwrap();
        assert!(out == data, "length {len}");
    }
}

#[test]
fn every_token_kind_decodes() {
    let mut rng = Rng(7);
    let mut block = Vec::with_capacity(1 << 20);
    for p in 0..256 {
        match p % 5 {
            0 => block.extend(std::iter::repeat_n([1u8, 2, 3, 4, 5, 6, 7, 8], 512).flatten()),
            1 => block.extend(mixed_bytes(&mut rng, 4096)),
            2 => block.extend((0..4096).map(|_| rng.next() as u8)), // does not compress
            3 => block.extend(std::iter::repeat_n(0u8, 4096)),
            _ => block.extend(std::iter::repeat_n(0u8, 4096)), // with 3: a pattern run
        }
    }
    let x = |p: &[u8]| xpress_compress(p);
    let l = |p: &[u8]| lznt1_compress(p);
    for style in [PageStyle::Auto, PageStyle::Span, PageStyle::Raw] {
        let enc = encode_block(&block, style, &x);
        assert!(enc.len() < 1 << 20 || style == PageStyle::Raw || style == PageStyle::Span);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert!(out == block, "{style:?}");
        let enc = encode_block(&block, style, &l);
        decode_with(PageCodec::Lznt1, &enc, &mut out).unwrap();
        assert!(out == block, "{style:?} with LZNT1 pages");
    }
    // The Auto stream holds pattern pages, pattern runs, compressed and raw pages.
    let enc = encode_block(&block, PageStyle::Auto, &x);
    let words: Vec<u32> = enc
        .chunks(4)
        .filter(|c| c.len() == 4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(words.contains(&0xFFFF_FFFE) && words.contains(&0xFFFF_FFFD) && words.contains(&4096));
    // A stream one page short is an error, not a short block.
    let mut short = encode_block(&block, PageStyle::Raw, &x);
    short.truncate(short.len() - 4 - 4100);
    short.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    assert!(decode(&short, &mut Vec::new()).is_err());
}
