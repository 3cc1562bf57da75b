//! `hvkit vmrs` end to end: info on the corpus VMRS (no saved memory) and
//! on files made by `hvkit vmrs create`, extract-memory as raw and ELF
//! (read back byte-identical; the ELF checked by `readelf -l`), errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hvkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvkit"))
        .args(args)
        .output()
        .expect("run hvkit")
}

fn ok(args: &[&str]) -> String {
    let o = hvkit(args);
    assert!(
        o.status.success(),
        "hvkit {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn corpus() -> Option<PathBuf> {
    vhdx::test_corpus::corpus_subdir(env!("CARGO_MANIFEST_DIR"), "hyperv")
        .map_err(|skip| println!("{skip}"))
        .ok()
}

#[test]
fn corpus_vmrs_says_no_saved_memory() {
    let Some(dir) = corpus() else { return };
    let f = dir.join("dissect.hypervisor_test.VMRS");
    let text = ok(&["vmrs", "info", p(&f)]);
    assert!(text.contains("no saved memory"), "{text}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["vmrs", "info", "--json", p(&f)])).unwrap();
    assert_eq!(j["has_memory"], false);
    assert_eq!(j["vm_version"], "9.0");
    let tmp = tempfile::tempdir().unwrap();
    let o = hvkit(&[
        "vmrs",
        "extract-memory",
        p(&f),
        "-o",
        p(&tmp.path().join("m.raw")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no saved memory"));
}

#[test]
fn create_info_extract() {
    let tmp = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let b: Vec<u8> = (0..70_001u32).map(|i| (i % 251) as u8).collect();
    let fa = tmp.path().join("a.bin");
    let fb = tmp.path().join("b.bin");
    std::fs::write(&fa, &a).unwrap();
    std::fs::write(&fb, &b).unwrap();
    let regs = tmp.path().join("regs.json");
    std::fs::write(
        &regs,
        r#"[{"index": 0, "rip": "0xfffff80012345678", "rsp": 4096, "cr0": "0x80050033", "cr3": "0x1ad000", "efer": "0xd01",
            "cs": {"selector": "0x10", "limit": "0xffffffff", "attributes": "0x209b"}, "gdtr": {"base": "0x1000", "limit": 111}},
           {"index": 1, "rax": 42}]"#,
    )
    .unwrap();
    let out = tmp.path().join("s.vmrs");
    let gpa_b = "0x100000000";
    let spec_b = format!("{}@{gpa_b}", p(&fb));
    let created = ok(&[
        "vmrs",
        "create",
        "-o",
        p(&out),
        "--memory",
        p(&fa),
        "--memory",
        &spec_b,
        "--vp-regs",
        p(&regs),
    ]);
    assert!(created.contains("2 range(s), 2 VP(s)"), "{created}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["vmrs", "info", "--json", p(&out)])).unwrap();
    assert_eq!(j["has_memory"], true);
    assert_eq!(
        j["memory_bytes"],
        (a.len() as u64).div_ceil(4096) * 4096 + (b.len() as u64).div_ceil(4096) * 4096
    );
    assert_eq!(j["ranges"][1]["gpa"], gpa_b);
    assert_eq!(j["vp_count"], 2);
    assert_eq!(j["vps"][0]["rip"], "0xfffff80012345678");
    assert_eq!(j["vps"][0]["cr3"], "0x1ad000");
    assert_eq!(j["vps"][0]["cs"]["attributes"], "0x209b");
    assert_eq!(j["vps"][0]["gdtr"]["limit"], "0x6f");
    assert_eq!(j["vps"][1]["rax"], "0x2a");
    assert!(ok(&["vmrs", "info", p(&out)]).contains("rip=0xfffff80012345678"));
    // The container is sound.
    assert_eq!(hvkit(&["vmcx", "check", p(&out)]).status.code(), Some(0));

    let raw = tmp.path().join("m.raw");
    let s: serde_json::Value = serde_json::from_str(&ok(&[
        "vmrs",
        "extract-memory",
        "--json",
        p(&out),
        "-o",
        p(&raw),
    ]))
    .unwrap();
    assert_eq!(s["ranges"], 2);
    use std::os::unix::fs::{FileExt, MetadataExt};
    let f = std::fs::File::open(&raw).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(
        md.len(),
        0x1_0000_0000 + (b.len() as u64).div_ceil(4096) * 4096
    );
    // Sparse: the 4 GiB gap takes no space.
    assert!(
        md.blocks() * 512 < 64 << 20,
        "{} bytes allocated",
        md.blocks() * 512
    );
    let mut got = vec![0u8; a.len() + 5000];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got[..a.len()] == a[..] && got[a.len()..].iter().all(|&x| x == 0));
    let mut got = vec![0u8; b.len()];
    f.read_exact_at(&mut got, 0x1_0000_0000).unwrap();
    assert!(got == b);

    let elf = tmp.path().join("m.elf");
    ok(&[
        "vmrs",
        "extract-memory",
        "--format",
        "elf",
        p(&out),
        "-o",
        p(&elf),
    ]);
    match Command::new("readelf").arg("-lW").arg(&elf).output() {
        Ok(o) if o.status.success() => {
            let t = String::from_utf8_lossy(&o.stdout);
            assert!(t.contains("CORE"), "{t}");
            let loads: Vec<&str> = t
                .lines()
                .filter(|l| l.trim_start().starts_with("LOAD"))
                .collect();
            assert_eq!(loads.len(), 2, "{t}");
            assert!(loads[1].contains("0x0000000100000000"), "{t}");
        }
        _ => {
            assert!(
                std::env::var_os("HVKIT_REQUIRE_ORACLES").is_none_or(|v| v != "1"),
                "readelf is required"
            );
            println!("SKIP: readelf not installed");
        }
    }
    // volatility3's ELF layer reads the same bytes at the same addresses.
    match std::env::var_os("HVKIT_PYTHON") {
        Some(py) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/vol_elf_read.py");
            let o = Command::new(py)
                .arg(script)
                .arg(&elf)
                .args(["0", &a.len().to_string(), gpa_b, &b.len().to_string()])
                .output()
                .unwrap();
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert!(j.get("error").is_none(), "volatility3: {}", j["error"]);
            let sha = |d: &[u8]| {
                use sha2::Digest;
                sha2::Sha256::digest(d)
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            };
            assert_eq!(j["reads"][0], sha(&a));
            assert_eq!(j["reads"][1], sha(&b));
            assert_eq!(
                j["max_address"],
                0x1_0000_0000u64 + (b.len() as u64).div_ceil(4096) * 4096 - 1
            );
        }
        None => {
            assert!(
                std::env::var_os("HVKIT_REQUIRE_ORACLES").is_none_or(|v| v != "1"),
                "HVKIT_PYTHON is required"
            );
            println!("SKIP: HVKIT_PYTHON not set (volatility3 ELF layer cross-check)");
        }
    }
    let e = std::fs::read(&elf).unwrap();
    let loads = vmrs::elf::loads(&e).unwrap();
    assert!(e[loads[0].1 as usize..][..a.len()] == a[..]);
    assert!(e[loads[1].1 as usize..][..b.len()] == b[..]);
}

#[test]
fn create_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let fa = tmp.path().join("a.bin");
    std::fs::write(&fa, [1u8; 8192]).unwrap();
    let out = tmp.path().join("s.vmrs");
    let o = hvkit(&[
        "vmrs",
        "create",
        "-o",
        p(&out),
        "--memory",
        &format!("{}@0x1001", p(&fa)),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not 4 KiB aligned"));
    let o = hvkit(&[
        "vmrs",
        "create",
        "-o",
        p(&out),
        "--memory",
        p(&fa),
        "--memory",
        &format!("{}@4096", p(&fa)),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("overlap"));
    let regs = tmp.path().join("r.json");
    std::fs::write(&regs, r#"[{"rip": "zzz"}]"#).unwrap();
    let o = hvkit(&[
        "vmrs",
        "create",
        "-o",
        p(&out),
        "--memory",
        p(&fa),
        "--vp-regs",
        p(&regs),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("rip"));
    std::fs::write(&regs, r#"[{"rpi": 1}]"#).unwrap();
    let o = hvkit(&[
        "vmrs",
        "create",
        "-o",
        p(&out),
        "--memory",
        p(&fa),
        "--vp-regs",
        p(&regs),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown register"));
    assert!(!out.exists());
}
