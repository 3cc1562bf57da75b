//! The `hvkit` commands end to end: output, JSON, exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};

fn hvkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvkit"))
        .args(args)
        .output()
        .expect("run hvkit")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A 64 MiB dynamic base (blocks of 0x11, 0x22) and a differencing child
/// (a full block of 0x33, a partial block, a zero block over parent data).
/// Returns (base, child, expected raw content).
fn chain(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    const MIB: usize = 1 << 20;
    let size = 64 * MIB;
    let base = dir.join("base.vhdx");
    let mut bp = CreateParams::dynamic(size as u64);
    bp.block_size = 2 * MIB as u32;
    let mut blocks = BTreeMap::new();
    blocks.insert(0, BlockContent::Full(vec![0x11; 2 * MIB]));
    blocks.insert(1, BlockContent::Full(vec![0x22; 2 * MIB]));
    blocks.insert(5, BlockContent::Full(vec![0x55; 2 * MIB]));
    let f = std::fs::File::create(&base).unwrap();
    create(&f, "base", &bp, &blocks).unwrap();
    let mut expect = vec![0u8; size];
    expect[..2 * MIB].fill(0x11);
    expect[2 * MIB..4 * MIB].fill(0x22);
    expect[10 * MIB..12 * MIB].fill(0x55);

    let child = dir.join("child.avhdx");
    let cp = CreateParams::differencing(
        size as u64,
        ParentLink::relative(bp.data_write_guid, "base.vhdx"),
    );
    let mut blocks = BTreeMap::new();
    blocks.insert(2, BlockContent::Full(vec![0x33; 2 * MIB]));
    // Block 1: sectors 0..8 and 100..101 present with 0x44.
    let present: Vec<bool> = (0..4096).map(|s| s < 8 || s == 100).collect();
    blocks.insert(
        1,
        BlockContent::Partial {
            data: vec![0x44; 2 * MIB],
            present: present.clone(),
        },
    );
    blocks.insert(5, BlockContent::Zero);
    let f = std::fs::File::create(&child).unwrap();
    create(&f, "child", &cp, &blocks).unwrap();
    expect[4 * MIB..6 * MIB].fill(0x33);
    for (s, on) in present.iter().enumerate() {
        if *on {
            expect[2 * MIB + s * 512..2 * MIB + (s + 1) * 512].fill(0x44);
        }
    }
    expect[10 * MIB..12 * MIB].fill(0);
    (base, child, expect)
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["info", "--help"],
        vec!["check", "--help"],
        vec!["read", "--help"],
        vec!["convert", "--help"],
        vec!["compare", "--help"],
    ] {
        let o = hvkit(&cmd);
        assert_eq!(code(&o), 0, "{cmd:?}");
        assert!(stdout(&o).contains("Usage"), "{cmd:?}");
    }
}

#[test]
fn info_json_describes_the_chain() {
    let t = tempfile::tempdir().unwrap();
    let (base, child, _) = chain(t.path());
    let o = hvkit(&["info", "--json", p(&child)]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["type"], "differencing");
    assert_eq!(v["virtual_size"], 64 << 20);
    assert_eq!(v["block_size"], 2 << 20);
    assert_eq!(v["bat"]["fully_present"], 1);
    assert_eq!(v["bat"]["partially_present"], 1);
    assert_eq!(v["bat"]["zero"], 1);
    assert_eq!(v["bat"]["sector_bitmap_blocks"], 1);
    assert_eq!(v["log"]["state"], "clean");
    let chain = v["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1]["path"], p(&base));
    assert_eq!(
        chain[1]["data_write_guid"],
        chain[0]["parent_linkage"]
            .as_str()
            .unwrap()
            .trim_matches(['{', '}'])
    );
    let keys: Vec<&str> = v["parent_locator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["parent_linkage", "relative_path"]);

    // Text output names the type and the chain.
    let o = hvkit(&["info", p(&child)]);
    let s = stdout(&o);
    assert!(
        s.contains("differencing") && s.contains("chain (2 layers"),
        "{s}"
    );

    // With the parent gone, info still describes the file and says why the chain is unresolved.
    std::fs::remove_file(&base).unwrap();
    let o = hvkit(&["info", "--json", p(&child)]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        v["chain_error"]
            .as_str()
            .unwrap()
            .contains("parent disk not found"),
        "{v}"
    );
}

#[test]
fn read_and_convert_match_the_model() {
    let t = tempfile::tempdir().unwrap();
    let (_, child, expect) = chain(t.path());
    let out = t.path().join("part.bin");
    let o = hvkit(&[
        "read",
        p(&child),
        "--offset",
        "2M",
        "--length",
        "4M",
        "-o",
        p(&out),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == expect[2 << 20..6 << 20]);
    let o = hvkit(&["read", p(&child), "--offset", "51200", "--length", "1000"]);
    assert_eq!(o.stdout, expect[51200..52200]);
    let o = hvkit(&["read", p(&child), "--offset", "63M", "--length", "2M"]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the virtual disk"));

    let raw = t.path().join("flat.raw");
    let o = hvkit(&["convert", p(&child), p(&raw), "-O", "raw", "--json"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(std::fs::read(&raw).unwrap() == expect);
    // Data: parent blocks 0 and 1 (partly), child block 2 and partial sectors.
    assert_eq!(
        v["data_bytes"].as_u64().unwrap() + v["zero_bytes"].as_u64().unwrap(),
        64 << 20
    );
    assert_eq!(v["data_bytes"], 6 << 20);
    // Sparse where the disk reads zero.
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&raw).unwrap().blocks() * 512;
    assert!(blocks <= 8 << 20, "raw output uses {blocks} bytes");
}

#[test]
fn compare_reports_the_first_difference() {
    let t = tempfile::tempdir().unwrap();
    let (base, child, mut expect) = chain(t.path());
    let raw = t.path().join("expect.raw");
    std::fs::write(&raw, &expect).unwrap();
    let o = hvkit(&["compare", p(&child), p(&raw)]);
    assert_eq!(
        code(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("identical"));
    let o = hvkit(&["compare", p(&child), p(&base)]);
    assert_eq!(code(&o), 1);
    assert!(
        stdout(&o).contains(&format!("offset {}", 2 << 20)),
        "{}",
        stdout(&o)
    );
    expect[12345] ^= 1;
    std::fs::write(&raw, &expect).unwrap();
    let o = hvkit(&["compare", "--json", p(&raw), p(&child)]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["first_difference"], 12345);
    // Different sizes differ at the end of the shorter one.
    expect[12345] ^= 1;
    std::fs::write(&raw, &expect[..1 << 20]).unwrap();
    let o = hvkit(&["compare", "--json", "--raw", p(&raw), p(&raw)]);
    assert_eq!(code(&o), 0);
    let o = hvkit(&["compare", "--json", p(&base), p(&raw)]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["first_difference"], 1 << 20);
    // Missing files are errors (2), not differences.
    let o = hvkit(&["compare", p(&raw), "/nonexistent/x.vhdx"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn check_exit_codes_and_repair() {
    let t = tempfile::tempdir().unwrap();
    let (base, _, _) = chain(t.path());
    let o = hvkit(&["check", p(&base)]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("no errors"));

    // A BAT entry pointing past the end of the file: corruption (2) with the entry's offset.
    let bad = t.path().join("bad.vhdx");
    std::fs::copy(&base, &bad).unwrap();
    let mut bytes = std::fs::read(&bad).unwrap();
    let entry = vhdx::format::bat_entry::make(6, 4 << 30);
    bytes[(3 << 20) + 8..(3 << 20) + 16].copy_from_slice(&entry.to_le_bytes());
    std::fs::write(&bad, &bytes).unwrap();
    let o = hvkit(&["check", "--json", p(&bad)]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "corrupt");
    let probs = v["problems"].as_array().unwrap();
    assert!(
        probs
            .iter()
            .any(|p| p["what"] == "BAT" && p["offset"] == (3 << 20) + 8),
        "{v}"
    );
    // Reading it fails with an error that names the file and the offset (exit 2 = corruption).
    let o = hvkit(&["read", p(&bad), "--offset", "0", "--length", "512"]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.vhdx") && err.contains("0x300008"),
        "{err}"
    );

    // Not a VHDX at all.
    let junk = t.path().join("junk.vhdx");
    std::fs::write(&junk, vec![7u8; 2 << 20]).unwrap();
    let o = hvkit(&["check", p(&junk)]);
    assert_eq!(code(&o), 2);
    // Missing file: other error.
    let o = hvkit(&["check", "/nonexistent.vhdx"]);
    assert_eq!(code(&o), 1);
}

/// The corpus file with an un-replayed log, decompressed into `dir`; None
/// (with a printed SKIP) when the corpus is absent.
fn corpus_dirty_log(dir: &Path) -> Option<PathBuf> {
    let corpus = std::env::var_os("HVKIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    let bz = corpus.join("vhdx/qemu-dirtylog-10G-4M.vhdx.bz2");
    if !bz.is_file() {
        println!(
            "SKIP: corpus not found at {} (set HVKIT_CORPUS)",
            corpus.display()
        );
        return None;
    }
    let img = dir.join("dirty.vhdx");
    let mut dec = bzip2::read::BzDecoder::new(std::fs::File::open(&bz).unwrap());
    std::io::copy(&mut dec, &mut std::fs::File::create(&img).unwrap()).unwrap();
    Some(img)
}

/// The corpus file with an un-replayed log converts to what it shows after
/// replay (QEMU iotest 070: [0, 18 MiB) reads 0xA5, the rest zeros) on the
/// O_DIRECT path and the page-cache path alike; its blocks come from the
/// log replayed in memory, not from the file, and the source stays as it was.
#[test]
fn convert_of_the_corpus_dirty_log_reads_through_the_replayed_log() {
    let t = tempfile::tempdir().unwrap();
    let Some(img) = corpus_dirty_log(t.path()) else {
        return;
    };
    let before = std::fs::read(&img).unwrap();
    for extra in [None, Some("--buffered")] {
        let out = t.path().join("out.raw");
        let mut args = vec!["convert", "-q", p(&img), p(&out), "-O", "raw"];
        args.extend(extra);
        let o = hvkit(&args);
        assert_eq!(
            code(&o),
            0,
            "{extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let f = std::fs::File::open(&out).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 10 << 30, "{extra:?}");
        let mut head = vec![0u8; 19 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
        assert!(head[..18 << 20].iter().all(|&b| b == 0xA5), "{extra:?}");
        assert!(head[18 << 20..].iter().all(|&b| b == 0), "{extra:?}");
        // Sparse: nothing but the 18 MiB of data is allocated.
        use std::os::unix::fs::MetadataExt;
        let allocated = f.metadata().unwrap().blocks() * 512;
        assert!(
            allocated <= 20 << 20,
            "{extra:?}: {allocated} bytes allocated"
        );
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        std::fs::read(&img).unwrap() == before,
        "convert must not write its source"
    );
}

#[test]
fn check_repair_replays_the_corpus_dirty_log() {
    let t = tempfile::tempdir().unwrap();
    let Some(img) = corpus_dirty_log(t.path()) else {
        return;
    };
    let before = std::fs::read(&img).unwrap();
    let o = hvkit(&["check", "--json", p(&img)]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["log_active_entries"], 1);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "check without --repair must not write"
    );
    let o = hvkit(&["info", "--json", p(&img)]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["log"]["state"], "needs_replay");
    let o = hvkit(&["check", "--repair", p(&img)]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("log replayed"));
    let o = hvkit(&["check", p(&img)]);
    assert_eq!(code(&o), 0);
    let o = hvkit(&["read", p(&img), "--offset", "17M", "--length", "1M"]);
    assert!(o.stdout.iter().all(|&b| b == 0xA5) && o.stdout.len() == 1 << 20);
}
