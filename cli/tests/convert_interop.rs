//! `hvkit convert SRC DST -O raw` against `qemu-img convert -O raw` on
//! images made on the fly by QEMU (fixed and dynamic, block sizes 1 to
//! 256 MiB, odd sizes, `block_state_zero=off`, one image larger than a
//! 4 GiB chunk) and written by `qemu-io` at seeded random offsets: the two
//! raw files must be byte-identical. Also a differencing chain written by
//! `vhdx::create` (which QEMU cannot read): the raw file must equal what
//! `vhdx::Disk` reads. The library-level checks of the same kind of images
//! are in `vhdx/tests/qemu_interop.rs`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};

const MIB: u64 = 1 << 20;

/// True when oracles are required (CI): a missing tool fails the test.
fn oracles_required() -> bool {
    std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1")
}

fn have_tool(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !oracles_required(),
            "{tool} is required (HVKIT_REQUIRE_ORACLES=1) but does not run"
        );
        println!("SKIP: {tool} is not installed");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hvkit_convert(src: &Path, dst: &Path, extra: &[&Path]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hvkit"));
    cmd.arg("convert")
        .arg(src)
        .arg(dst)
        .args(["-O", "raw", "-q"]);
    for p in extra {
        cmd.arg("--parent").arg(p);
    }
    run(&mut cmd);
}

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `qemu-io` write commands: small ones anywhere, ones crossing a block
/// boundary, ones spanning blocks, ones at the tail (512-aligned).
fn random_writes(rng: &mut Rng, size: u64, block: u64, n: usize) -> Vec<String> {
    let sectors = size / 512;
    let blocks = size.div_ceil(block);
    (0..n)
        .map(|i| {
            let (off, len) = match i % 4 {
                0 => (rng.below(sectors) * 512, 512 * (1 + rng.below(16))),
                1 if blocks > 1 => {
                    let edge = (1 + rng.below(blocks - 1)) * block;
                    let before = 512 * (1 + rng.below(64));
                    (edge - before, before + 512 * (1 + rng.below(64)))
                }
                2 => (
                    rng.below(sectors) * 512,
                    512 * (1 + rng.below((2 * block).min(4 * MIB) / 512)),
                ),
                _ => {
                    let back = 512 * (1 + rng.below(64));
                    (size - back, back)
                }
            };
            format!(
                "write -P {:#x} {off} {}",
                1 + rng.below(255),
                len.min(size - off)
            )
        })
        .collect()
}

fn qemu_image(
    dir: &Path,
    name: &str,
    opts: &str,
    size: u64,
    block: u64,
    seed: u64,
    extra: &[String],
) -> PathBuf {
    let img = dir.join(format!("{name}.vhdx"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o"])
        .arg(format!("{opts},block_size={block}"))
        .arg(&img)
        .arg(size.to_string()));
    let mut writes = random_writes(&mut Rng(seed), size, block, 24);
    writes.extend_from_slice(extra);
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "vhdx"]);
    for w in &writes {
        cmd.arg("-c").arg(w);
    }
    let out = run(cmd.arg(&img));
    assert_eq!(out.matches("wrote ").count(), writes.len(), "{out}");
    img
}

/// Panics with the first differing offset unless the files are identical.
fn assert_identical(a: &Path, b: &Path) {
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    assert_eq!(
        la,
        lb,
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut pos = 0u64;
    while pos < la {
        let n = (la - pos).min(x.len() as u64) as usize;
        fa.read_exact(&mut x[..n]).unwrap();
        fb.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            let i = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap();
            panic!(
                "{} and {} differ at offset {:#x}: {:#04x} vs {:#04x}",
                a.display(),
                b.display(),
                pos + i as u64,
                x[i],
                y[i]
            );
        }
        pos += n as u64;
    }
}

fn check_against_qemu(img: &Path) -> PathBuf {
    let q = img.with_extension("qemu.raw");
    let h = img.with_extension("hvkit.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(img)
        .arg(&q));
    // The destination exists, larger and full of junk: it must be replaced.
    std::fs::write(&h, vec![0xEEu8; 3 << 20]).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&h).unwrap();
    f.set_len(std::fs::metadata(&q).unwrap().len() + (5 << 20))
        .unwrap();
    drop(f);
    hvkit_convert(img, &h, &[]);
    assert_identical(&h, &q);
    // Through the page cache (copy_file_range) instead of O_DIRECT: the
    // same bytes.
    let b = img.with_extension("buffered.raw");
    run(Command::new(env!("CARGO_BIN_EXE_hvkit"))
        .arg("convert")
        .arg(img)
        .arg(&b)
        .args(["-O", "raw", "-q", "--buffered"]));
    assert_identical(&b, &q);
    std::fs::remove_file(&b).unwrap();
    h
}

#[test]
fn convert_matches_qemu_img_convert() {
    if !(have_tool("qemu-img") && have_tool("qemu-io")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, opts, size, block)) in [
        ("dyn-1M", "subformat=dynamic", 100 * MIB + 512, MIB),
        ("dyn-8M", "subformat=dynamic", 200 * MIB - 3 * 512, 8 * MIB),
        ("dyn-256M", "subformat=dynamic", 600 * MIB - 512, 256 * MIB),
        (
            "dyn-1M-zero-off",
            "subformat=dynamic,block_state_zero=off",
            64 * MIB + 1024,
            MIB,
        ),
        (
            "fixed-8M-zero-off",
            "subformat=fixed,block_state_zero=off",
            100 * MIB + 512,
            8 * MIB,
        ),
        ("fixed-32M", "subformat=fixed", 96 * MIB - 512, 32 * MIB),
    ]
    .into_iter()
    .enumerate()
    {
        let img = qemu_image(dir.path(), name, opts, size, block, 10 + i as u64, &[]);
        check_against_qemu(&img);
    }
}

/// 4097 MiB with 1 MiB blocks (two chunks), writes on both sides of 4 GiB:
/// identical output, and sparse (only about the written blocks allocated).
#[test]
fn convert_of_an_image_larger_than_a_chunk() {
    if !(have_tool("qemu-img") && have_tool("qemu-io")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let four_g = 4u64 << 30;
    let extra: Vec<String> = [
        (0x41, four_g - MIB - 1024, 4096),
        (0x42, four_g - 1536, 2560),
        (0x43, four_g + 512, 8192),
        (0x44, four_g + MIB - 1024, 1024),
    ]
    .iter()
    .map(|(p, o, l)| format!("write -P {p:#x} {o} {l}"))
    .collect();
    let img = qemu_image(
        dir.path(),
        "dyn-1M-4097M",
        "subformat=dynamic",
        4097 * MIB,
        MIB,
        20,
        &extra,
    );
    let h = check_against_qemu(&img);
    let allocated = std::fs::metadata(&h).unwrap().blocks() * 512;
    assert!(allocated < 256 * MIB, "{allocated} bytes allocated");
}

/// A base and a differencing child written by `vhdx::create` (partial,
/// zero and not-present blocks): converting the child through its locator
/// and with `--parent` gives exactly what `vhdx::Disk` reads.
#[test]
fn convert_of_a_differencing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (size, bs) = (16 * MIB, 2 * MIB);
    let fill = |tag: u8| -> Vec<u8> {
        (0..bs as usize)
            .map(|i| (i as u8).wrapping_mul(13) ^ tag)
            .collect()
    };
    let base = dir.path().join("base.vhdx");
    let mut bp = CreateParams::dynamic(size);
    bp.block_size = bs as u32;
    let blocks: BTreeMap<u64, BlockContent> = (0..8)
        .map(|b| (b, BlockContent::Full(fill(b as u8))))
        .collect();
    let f = std::fs::File::create_new(&base).unwrap();
    create(&f, "base.vhdx", &bp, &blocks).unwrap();

    let child = dir.path().join("child.avhdx");
    let mut cp =
        CreateParams::differencing(size, ParentLink::relative(bp.data_write_guid, "base.vhdx"));
    cp.block_size = bs as u32;
    let spb = (bs / 512) as usize;
    let present: Vec<bool> = (0..spb).map(|s| (s / 3) % 5 == 1).collect();
    let blocks = BTreeMap::from([
        (
            0,
            BlockContent::Partial {
                data: fill(0xA0),
                present: present.clone(),
            },
        ),
        (1, BlockContent::Zero),
        (2, BlockContent::Full(fill(0xB0))),
        (3, BlockContent::Unmapped),
        (
            5,
            BlockContent::Partial {
                data: fill(0xC0),
                present: present.iter().map(|p| !p).collect(),
            },
        ),
    ]);
    let f = std::fs::File::create_new(&child).unwrap();
    create(&f, "child.avhdx", &cp, &blocks).unwrap();

    let disk = vhdx::Disk::open(&child, &vhdx::ChainOptions::default()).unwrap();
    let mut want = vec![0u8; size as usize];
    disk.read_at(&mut want, 0).unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &want).unwrap();

    for (name, parents) in [("locator.raw", vec![]), ("explicit.raw", vec![&*base])] {
        let out = dir.path().join(name);
        hvkit_convert(&child, &out, &parents);
        assert_identical(&out, &expected);
    }
    // Spot checks of the expected content itself.
    assert_eq!(
        &want[2 * MIB as usize..4 * MIB as usize],
        &vec![0u8; bs as usize][..]
    );
    assert_eq!(&want[4 * MIB as usize..6 * MIB as usize], &fill(0xB0)[..]);
    assert_eq!(&want[8 * MIB as usize..10 * MIB as usize], &fill(4)[..]);
}
