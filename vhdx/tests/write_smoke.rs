use std::collections::BTreeMap;
use vhdx::create::{create, CreateParams};
use vhdx::write::DiscardMode;
use vhdx::{ChainOptions, Disk};

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.vhdx");
    let f = std::fs::File::create_new(&p).unwrap();
    let mut params = CreateParams::dynamic(64 << 20);
    params.block_size = 1 << 20;
    create(&f, "a", &params, &BTreeMap::new()).unwrap();
    drop(f);
    let mut model = vec![0u8; 64 << 20];
    let mut d = Disk::open_writable(&p, &ChainOptions::default()).unwrap();
    let mut x = 12345u64;
    for i in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (60 << 20);
        let len = ((x >> 8) % 300_000) as usize + 1;
        if i % 7 == 3 {
            let off = off / 512 * 512;
            let len = (len as u64 / 512 * 512).max(512);
            d.discard(off, len, DiscardMode::Zero).unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data: Vec<u8> = (0..len).map(|k| (k as u64 ^ x) as u8 | 1).collect();
            d.write_at(&data, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        if i % 50 == 0 {
            d.flush().unwrap();
        }
    }
    let mut got = vec![0u8; 64 << 20];
    d.read_at(&mut got, 0).unwrap();
    assert!(got == model, "before close");
    d.close().unwrap();
    let d = Disk::open(&p, &ChainOptions::default()).unwrap();
    d.read_at(&mut got, 0).unwrap();
    assert!(got == model, "after reopen");
    assert!(d.leaf().header().log_guid.is_nil());
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(&p)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success());
    std::fs::write(dir.path().join("m.raw"), &model).unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "vhdx", "-F", "raw"])
        .arg(&p)
        .arg(dir.path().join("m.raw"))
        .output()
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}
