//! Every corpus image reads with the raw SHA-256 its README gives, and the
//! libvhdi structure fragments parse to the values listed there.

mod common;

use common::*;
use std::io::Read;
use vhdx::format::bat_entry::{self, PayloadState};
use vhdx::{ChainOptions, Disk, LogStatus, OpenOptions, VhdxFile};

struct Expect {
    file: &'static str,
    raw_sha: &'static str,
    virtual_size: u64,
    block_size: u64,
    lss: u32,
    pss: u32,
    creator: &'static str,
}

const IMAGES: &[Expect] = &[
    Expect {
        file: "hyperv2012-dynamic-1G.vhdx.bz2",
        raw_sha: "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478",
        virtual_size: 1 << 30,
        block_size: 32 << 20,
        lss: 512,
        pss: 4096,
        creator: "Microsoft Windows 6.2.9200.16384",
    },
    Expect {
        file: "qemu-dirtylog-10G-4M.vhdx.bz2",
        raw_sha: "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f",
        virtual_size: 10 << 30,
        block_size: 1 << 20,
        lss: 512,
        pss: 512,
        creator: "QEMU v1.6.50",
    },
    Expect {
        file: "disk2vhd-256M.vhdx.bz2",
        raw_sha: "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a",
        virtual_size: 256 << 20,
        block_size: 2 << 20,
        lss: 512,
        pss: 512,
        creator: "d2v",
    },
    Expect {
        file: "win81-config2-base-100M.vhdx.bz2",
        raw_sha: "afce9cca367ebfa91a673d612bcb6fc32b12a80211207f7a7b1cd3aed3cac19d",
        virtual_size: 100 << 20,
        block_size: 32 << 20,
        lss: 512,
        pss: 4096,
        creator: "Microsoft Windows 6.3.9600.16521",
    },
];

#[test]
fn corpus_images_read_with_expected_hashes() {
    let Some(dir) = corpus_dir() else { return };
    for e in IMAGES {
        let img = decompressed(&dir.join("vhdx").join(e.file));
        let before = sha256_file(&img);
        let mut disk = Disk::open(&img, &ChainOptions::default())
            .unwrap_or_else(|err| panic!("{}: {err}", e.file));
        let f = disk.leaf();
        assert_eq!(f.virtual_size(), e.virtual_size, "{}", e.file);
        assert_eq!(f.block_size(), e.block_size, "{}", e.file);
        assert_eq!(f.logical_sector_size(), e.lss, "{}", e.file);
        assert_eq!(f.metadata().physical_sector_size, e.pss, "{}", e.file);
        assert_eq!(f.creator(), e.creator, "{}", e.file);
        assert!(f.problems().is_empty(), "{}: {:?}", e.file, f.problems());
        assert_eq!(sha256_reader(&mut disk), e.raw_sha, "{}", e.file);
        // A read-only open never changes the file (not even a replayed log).
        assert_eq!(sha256_file(&img), before, "{} changed on disk", e.file);
    }
}

#[test]
fn hyperv_sample_content_and_bat_states() {
    let Some(dir) = corpus_dir() else { return };
    let img = decompressed(&dir.join("vhdx/hyperv2012-dynamic-1G.vhdx.bz2"));
    let disk = Disk::open(&img, &ChainOptions::default()).unwrap();
    let f = disk.leaf();
    let states: Vec<_> = (0..32)
        .map(|b| PayloadState::from_bits(bat_entry::state_bits(f.bat()[b])).unwrap())
        .collect();
    assert!(states[..3].iter().all(|s| *s == PayloadState::FullyPresent));
    assert!(states[3..].iter().all(|s| *s == PayloadState::Zero));
    // Content oracle of QEMU iotest 064.
    let mut buf = vec![0u8; 1 << 20];
    for (off, want) in [
        (0u64, 0xA5u8),
        (32 << 20, 0xA5),
        (33 << 20, 0x96),
        (65 << 20, 0x96),
        (66 << 20, 0),
        (1000 << 20, 0),
    ] {
        disk.read_at(&mut buf, off).unwrap();
        assert!(buf.iter().all(|&b| b == want), "offset {off:#x}");
    }
    assert!(matches!(f.log_status(), LogStatus::Clean));
    let s = f.bat_stats();
    assert_eq!(
        (s.fully_present, s.zero, s.bytes_allocated),
        (3, 29, 96 << 20)
    );
    assert!(f.region_table().entries.iter().all(|r| r.required));
}

#[test]
fn dirty_log_replays_in_memory_and_on_disk() {
    let Some(dir) = corpus_dir() else { return };
    let img = decompressed(&dir.join("vhdx/qemu-dirtylog-10G-4M.vhdx.bz2"));
    let f = VhdxFile::open_path(&img, OpenOptions::read_only()).unwrap();
    let LogStatus::ReplayedInMemory(plan) = f.log_status() else {
        panic!("log should need replay")
    };
    assert_eq!(plan.entries.len(), 1);
    assert_eq!(plan.entries[0].sequence_number, 7);
    assert_eq!(plan.entries[0].log_position, 0xC000);
    assert_eq!(f.bat()[17], 0x1D00006);
    let mut buf = vec![0u8; 18 << 20];
    f.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xA5));

    // Refusing to replay is an error that names the log.
    let err = VhdxFile::open_path(
        &img,
        OpenOptions {
            replay_in_memory: false,
            ..OpenOptions::read_only()
        },
    )
    .unwrap_err();
    assert!(matches!(err, vhdx::Error::LogNeedsReplay { .. }), "{err}");

    // A writable open replays to disk; afterwards the log is clean.
    let tmp = tempfile::tempdir().unwrap();
    let copy = scratch_copy(&img, tmp.path());
    let w = VhdxFile::open_path(&copy, OpenOptions::writable()).unwrap();
    assert!(matches!(w.log_status(), LogStatus::ReplayedOnDisk(_)));
    drop(w);
    let f2 = VhdxFile::open_path(&copy, OpenOptions::read_only()).unwrap();
    assert!(matches!(f2.log_status(), LogStatus::Clean));
    assert!(f2.header().log_guid.is_nil());
    let mut d = Disk::open(&copy, &ChainOptions::default()).unwrap();
    assert_eq!(
        sha256_reader(&mut d),
        "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f"
    );
    let mut raw = Vec::new();
    std::fs::File::open(&copy)
        .unwrap()
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(
        &raw[0x200000 + 17 * 8..0x200000 + 18 * 8],
        &0x1D00006u64.to_le_bytes()
    );
}

#[test]
fn disk2vhd_identical_headers_are_accepted() {
    let Some(dir) = corpus_dir() else { return };
    let img = decompressed(&dir.join("vhdx/disk2vhd-256M.vhdx.bz2"));
    let f = VhdxFile::open_path(&img, OpenOptions::read_only()).unwrap();
    assert_eq!(f.header().sequence_number, 1);
    assert_eq!(f.bat_stats().fully_present, 128);
}

#[test]
fn win81_sample_bat_states() {
    let Some(dir) = corpus_dir() else { return };
    let img = decompressed(&dir.join("vhdx/win81-config2-base-100M.vhdx.bz2"));
    let f = VhdxFile::open_path(&img, OpenOptions::read_only()).unwrap();
    let st: Vec<u64> = f.bat()[..4]
        .iter()
        .map(|&e| bat_entry::state_bits(e))
        .collect();
    assert_eq!(st, vec![6, 0, 2, 2]);
    assert_eq!(bat_entry::file_offset(f.bat()[0]), 4 << 20);
}

mod fragments {
    use super::*;
    use vhdx::format::file_id::FileIdentifier;
    use vhdx::format::header::Header;
    use vhdx::format::locator::ParentLocator;
    use vhdx::format::metadata::parse_table;
    use vhdx::format::{guids, MIB};

    fn frag(name: &str) -> Option<Vec<u8>> {
        let dir = corpus_dir()?;
        Some(std::fs::read(dir.join("vhdx/libvhdi-fragments").join(name)).unwrap())
    }

    #[test]
    fn file_identifier() {
        let Some(b) = frag("file_identifier.1") else {
            return;
        };
        assert_eq!(
            FileIdentifier::parse(&b).unwrap().creator,
            "Microsoft Windows 10.0.19041.0"
        );
    }

    #[test]
    fn image_header() {
        let Some(b) = frag("image_header.1") else {
            return;
        };
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.sequence_number, 6);
        assert!(h.log_guid.is_nil());
        assert_eq!((h.log_offset, h.log_length), (MIB, MIB as u32));
        assert_eq!(h.version, 1);
    }

    #[test]
    fn region_table_entries() {
        let Some(b) = frag("region_table.1") else {
            return;
        };
        // Only 80 bytes: too short for the 64 KiB checksum, so decode the entries directly.
        assert_eq!(&b[..4], b"regi");
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 2);
        let entry = |i: usize| {
            let at = 16 + i * 32;
            (
                uuid::Uuid::from_bytes_le(b[at..at + 16].try_into().unwrap()),
                u64::from_le_bytes(b[at + 16..at + 24].try_into().unwrap()),
                u32::from_le_bytes(b[at + 28..at + 32].try_into().unwrap()),
            )
        };
        let e: Vec<_> = (0..2).map(entry).collect();
        assert!(e.contains(&(guids::BAT_REGION, 3 * MIB, 1)));
        assert!(e.contains(&(guids::METADATA_REGION, 2 * MIB, 1)));
        let h = frag("region_table_header.1").unwrap();
        assert_eq!(&h[..4], b"regi");
        let one = frag("region_table_entry.1").unwrap();
        assert_eq!(&one[..], &b[16..48]);
    }

    #[test]
    fn metadata_table() {
        let Some(h) = frag("metadata_table_header.1") else {
            return;
        };
        let mut table = h.clone();
        table.resize(64 << 10, 0);
        // The header fragment says 5 entries; only its 32 bytes are given.
        assert_eq!(&h[..8], b"metadata");
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 5);
        let e = frag("metadata_table_entry.1").unwrap();
        table[10..12].copy_from_slice(&1u16.to_le_bytes());
        table[32..64].copy_from_slice(&e);
        let entries = parse_table(&table).unwrap();
        assert_eq!(entries[0].item_id, guids::FILE_PARAMETERS);
        assert_eq!((entries[0].offset, entries[0].length), (64 << 10, 8));
        assert!(entries[0].is_required && !entries[0].is_user && !entries[0].is_virtual_disk);
    }

    #[test]
    fn parent_locator() {
        let Some(h) = frag("parent_locator_header.1") else {
            return;
        };
        assert_eq!(
            uuid::Uuid::from_bytes_le(h[..16].try_into().unwrap()),
            guids::LOCATOR_TYPE_VHDX
        );
        assert_eq!(u16::from_le_bytes([h[18], h[19]]), 5);
        let e = frag("parent_locator_entry.1").unwrap();
        assert_eq!(u32::from_le_bytes(e[0..4].try_into().unwrap()), 0x50);
        assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), 0x6C);
        assert_eq!(u16::from_le_bytes([e[8], e[9]]), 28);
        assert_eq!(u16::from_le_bytes([e[10], e[11]]), 76);
        // Rebuild a one-pair locator around the fragment's entry and parse it.
        let mut item = h[..18].to_vec();
        item.extend_from_slice(&1u16.to_le_bytes());
        item.extend_from_slice(&e);
        item.resize(0x50, 0);
        item.extend(
            "parent_linkage"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes()),
        );
        item.extend(
            "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes()),
        );
        let loc = ParentLocator::parse(&item).unwrap();
        assert_eq!(
            loc.get("parent_linkage"),
            Some("{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}")
        );
    }
}

/// `release_tail` on files other tools wrote (after a writable open, which
/// replays the dirty log of the QEMU file) cuts nothing any structure
/// references: each reads with its expected hash and checks clean after.
#[test]
fn release_tail_keeps_every_corpus_image_whole() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for e in IMAGES {
        let img = scratch_copy(&decompressed(&dir.join("vhdx").join(e.file)), tmp.path());
        let before = std::fs::metadata(&img).unwrap().len();
        let mut f = VhdxFile::open_path(&img, OpenOptions::writable()).unwrap();
        let used = f.used_end();
        let given = f.release_tail(0).unwrap();
        drop(f);
        let after = std::fs::metadata(&img).unwrap().len();
        assert_eq!(after, before - given, "{}", e.file);
        assert!(after >= used.min(before), "{}", e.file);
        println!(
            "{}: {before} bytes, used_end {used}, gave back {given}",
            e.file
        );
        let mut disk = Disk::open(&img, &ChainOptions::default()).unwrap();
        assert_eq!(sha256_reader(&mut disk), e.raw_sha, "{}", e.file);
        let r = vhdx::check::check_path(&img, false).unwrap();
        assert!(!r.is_corrupt(), "{}: {:?}", e.file, r.problems);
    }
}
