//! `hvkit demo`: the checkpoint story of the seeds on a VM that is off,
//! verified byte for byte. A VM with a disk is made; data is written and
//! checkpoints are taken before and after an "update"; a bad change is
//! undone by applying the older checkpoint while saving the current state
//! (a branch); a checkpoint is exported as a standalone VM; one is deleted
//! (its disk merged) and then a whole subtree, until the VM is back on its
//! base disk. After every step every checkpoint's disk and the current
//! disk are compared with an in-memory model, and where installed qemu-img
//! checks and compares the exported disk and dissect.hypervisor and
//! pyvhdi read every file of the folder.

use crate::vm_view::{chain_names, tree_lines};
use crate::{CliError, CliResult};
use checkpoint::{ApplyOptions, CreateOptions, DiskSpec, ExportOptions, OsFs, VmFolder, VmSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to work in (default: a temporary folder, removed afterwards)
    dir: Option<PathBuf>,
}

const MIB: u64 = 1 << 20;
const SIZE: u64 = 1 << 30;
const PIECE: usize = 4 << 20;

/// Deterministic, incompressible bytes of a write, by position.
fn fill(seed: u64, pos: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut x = (seed ^ (pos / 8 + i as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// A disk's content as the writes made to it, in order.
#[derive(Clone, Default)]
struct Model {
    writes: Vec<(u64, u64, u64)>,
}

impl Model {
    fn expect(&self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for &(at, len, seed) in &self.writes {
            let (s, e) = (at.max(off), (at + len).min(end));
            if s < e {
                // Bytes of a write depend on their 8-byte-aligned position.
                let a = s & !7;
                let mut tmp = vec![0u8; (e - a) as usize];
                fill(seed, a, &mut tmp);
                buf[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&tmp[(s - a) as usize..]);
            }
        }
    }
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string(), 1)
}

/// Writes `len` bytes of `seed` at `off` of the disk file `leaf`.
fn write(leaf: &Path, model: &mut Model, off: u64, len: u64, seed: u64) -> Result<(), CliError> {
    let mut d = vhdx::Disk::open_writable(leaf, &vhdx::ChainOptions::default())?;
    let mut buf = vec![0u8; PIECE];
    let mut at = off;
    while at < off + len {
        let n = (PIECE as u64).min(off + len - at) as usize;
        let a = at & !7;
        let mut tmp = vec![0u8; n + (at - a) as usize];
        fill(seed, a, &mut tmp);
        buf[..n].copy_from_slice(&tmp[(at - a) as usize..]);
        d.write_at(&buf[..n], at)?;
        at += n as u64;
    }
    d.close()?;
    model.writes.push((off, len, seed));
    Ok(())
}

/// Compares every byte of `disk` (through its chain) with `model`.
fn verify(disk: &Path, model: &Model, what: &str) -> Result<u64, CliError> {
    let d = chain::ChainDisk::open(disk, &vhdx::ChainOptions::default())?;
    let mut got = vec![0u8; PIECE];
    let mut want = vec![0u8; PIECE];
    let mut off = 0;
    while off < d.virtual_size() {
        let n = PIECE.min((d.virtual_size() - off) as usize);
        d.read_at(&mut got[..n], off)?;
        model.expect(off, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = got[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(err(format!(
                "{what}: {} differs from the model at offset {:#x}",
                disk.display(),
                off + i as u64
            )));
        }
        off += n as u64;
    }
    Ok(off)
}

/// The state of the story: the model of each checkpoint (by name) and of
/// the current disk.
struct Story {
    dir: PathBuf,
    checkpoints: BTreeMap<String, Model>,
    current: Model,
    bytes: u64,
}

impl Story {
    fn folder(&self) -> Result<VmFolder, CliError> {
        Ok(VmFolder::open(&self.dir)?)
    }
    fn leaf(&self) -> Result<PathBuf, CliError> {
        Ok(self.folder()?.disks[0].path.clone())
    }
    /// Every checkpoint's disk and the current disk against the models.
    fn check(&mut self, step: &str) -> Result<(), CliError> {
        let f = self.folder()?;
        let names: Vec<&str> = f.checkpoints.iter().map(|c| c.name.as_str()).collect();
        let want: Vec<&str> = self.checkpoints.keys().map(String::as_str).collect();
        let mut sorted = names.clone();
        sorted.sort();
        if sorted != want {
            return Err(err(format!(
                "{step}: the tree holds {names:?}, the model {want:?}"
            )));
        }
        for c in &f.checkpoints {
            self.bytes += verify(
                &c.disks[0].path,
                &self.checkpoints[&c.name],
                &format!("{step}: checkpoint {:?}", c.name),
            )?;
        }
        self.bytes += verify(
            &f.disks[0].path,
            &self.current,
            &format!("{step}: the current disk"),
        )?;
        println!(
            "   verified: {} checkpoint disks and the current disk, every byte",
            f.checkpoints.len()
        );
        Ok(())
    }
    fn show(&self) -> Result<(), CliError> {
        let f = self.folder()?;
        for l in tree_lines(&f) {
            println!("   {l}");
        }
        println!("   disk chain: {}", chain_names(&f.disks[0]));
        Ok(())
    }
}

fn step(n: &mut u32, what: &str) -> Instant {
    *n += 1;
    println!("\n{n}. {what}");
    Instant::now()
}

fn took(t: Instant) {
    println!("   ({:.1} ms)", t.elapsed().as_secs_f64() * 1e3);
}

/// The python with dissect.hypervisor and pyvhdi, if there is one.
fn oracle_python() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/folder_oracle.py");
    if !script.is_file() {
        return None;
    }
    let mut cands: Vec<PathBuf> = std::env::var_os("HVKIT_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(h) = std::env::var_os("HOME") {
        cands.push(Path::new(&h).join(".cache/hvkit-venv/bin/python"));
    }
    cands.push("python3".into());
    cands.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import dissect.hypervisor, pyvhdi"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// dissect.hypervisor opens every .vmcx/.vmrs of the folder and sees our
/// tree keys; pyvhdi and dissect read every disk as we do.
fn oracles(f: &VmFolder, py: &Path) -> Result<(), CliError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/folder_oracle.py");
    let mut configs = vec![
        f.config_path.display().to_string(),
        f.runtime_path.display().to_string(),
    ];
    for c in &f.checkpoints {
        configs.push(c.config_path.display().to_string());
        configs.push(c.runtime_path.display().to_string());
    }
    let disks: Vec<serde_json::Value> = f.every_disk()
        .map(|d| serde_json::json!({"chain": d.chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()}))
        .collect();
    let req = serde_json::json!({"configs": configs, "disks": disks});
    let mut child = Command::new(py)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(err)?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(req.to_string().as_bytes())
        .map_err(err)?;
    let out = child.wait_with_output().map_err(err)?;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(err)?;
    if let Some(e) = j.get("error") {
        return Err(err(format!("the dissect/pyvhdi cross-check failed: {e}")));
    }
    for c in &f.checkpoints {
        let v = &j["configs"][c.config_path.display().to_string()]["values"];
        if v["/configuration/hvkit/checkpoint/name"].as_str() != Some(c.name.as_str())
            || v["/configuration/hvkit/checkpoint/parent"].as_str()
                != Some(c.parent.as_deref().unwrap_or(""))
        {
            return Err(err(format!(
                "dissect.hypervisor reads checkpoint {} differently: {v}",
                c.id
            )));
        }
    }
    for d in f.every_disk() {
        let r = &j["disks"][d.chain[0].display().to_string()];
        let ours = sha256(&d.path)?;
        if r["pyvhdi"].as_str() != Some(ours.as_str())
            || r["dissect"].as_str() != Some(ours.as_str())
        {
            return Err(err(format!(
                "{}: pyvhdi reads SHA-256 {}, dissect {}, hvkit {ours}",
                d.path.display(),
                r["pyvhdi"],
                r["dissect"]
            )));
        }
    }
    println!(
        "   dissect.hypervisor opened {} configuration and state files and sees the same tree; pyvhdi and dissect read each of the {} disks as hvkit does (SHA-256)",
        configs.len(),
        disks.len()
    );
    Ok(())
}

/// SHA-256 of a disk's guest content.
fn sha256(p: &Path) -> Result<String, CliError> {
    use sha2::Digest;
    let d = chain::ChainDisk::open(p, &vhdx::ChainOptions::default())?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut off = 0;
    while off < d.virtual_size() {
        let n = PIECE.min((d.virtual_size() - off) as usize);
        d.read_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(format!("{:x}", h.finalize()))
}

fn qemu(args: &[&str]) -> Option<Result<String, String>> {
    let o = Command::new("qemu-img").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Some(if o.status.success() {
        Ok(text)
    } else {
        Err(format!("{text} {}", String::from_utf8_lossy(&o.stderr)))
    })
}

pub fn run(a: Args) -> CliResult {
    let t0 = Instant::now();
    let (tmp, work) = match a.dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|e| err(format!("{}: {e}", d.display())))?;
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().map_err(err)?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let dir = work.join("web");
    println!(
        "== hvkit demo: the checkpoint story of a VM that is off, in {}",
        work.display()
    );
    let py = oracle_python();
    let mut n = 0;

    let t = step(
        &mut n,
        "A new VM \"web\" with a 1 GiB disk (generation 2, production checkpoints)",
    );
    let mut spec = VmSpec::new("web");
    spec.disks.push(DiskSpec::New { size: SIZE });
    let f = VmFolder::create(&dir, &spec)?;
    println!(
        "   {} ({}), {}",
        f.config_path.display(),
        f.vm.id,
        f.disks[0].path.display()
    );
    took(t);
    let mut s = Story {
        dir: dir.clone(),
        checkpoints: BTreeMap::new(),
        current: Model::default(),
        bytes: 0,
    };

    let t = step(&mut n, "The guest installs its system: 64 MiB written");
    let leaf = s.leaf()?;
    write(&leaf, &mut s.current, 0, 64 * MIB, 1)?;
    took(t);

    let take = |s: &mut Story, n: &mut u32, name: &str| -> Result<(), CliError> {
        let t = step(n, &format!("Checkpoint \"{name}\""));
        let c = checkpoint::create(
            &OsFs,
            &s.dir,
            &CreateOptions {
                name: Some(name.into()),
                ..CreateOptions::default()
            },
            None,
        )?;
        took(t);
        println!("   {} checkpoint {} (the VM is off: disks only); the disk was frozen and a new .avhdx took its place", c.kind.name(), c.id);
        s.checkpoints.insert(name.to_string(), s.current.clone());
        s.show()?;
        s.check(name)
    };
    take(&mut s, &mut n, "Before update")?;

    let t = step(
        &mut n,
        "An update: 32 MiB at 128 MiB, 1 MiB over the system",
    );
    let leaf = s.leaf()?;
    write(&leaf, &mut s.current, 128 * MIB, 32 * MIB, 2)?;
    write(&leaf, &mut s.current, 8 * MIB, MIB, 3)?;
    took(t);
    take(&mut s, &mut n, "After update")?;

    let t = step(&mut n, "A bad change: 16 MiB overwritten at 0");
    write(&s.leaf()?, &mut s.current, 0, 16 * MIB, 4)?;
    took(t);

    let t = step(
        &mut n,
        "Apply \"Before update\", saving the current state first (Take Checkpoint and Apply)",
    );
    let a = checkpoint::apply(
        &OsFs,
        &dir,
        "Before update",
        &ApplyOptions {
            save_current: true,
            save_name: Some("Bad change".into()),
        },
    )?;
    took(t);
    println!(
        "   applied; the VM is {}; the bad change is kept as checkpoint {}",
        a.state.name(),
        a.saved_as.clone().unwrap_or_default()
    );
    s.checkpoints.insert("Bad change".into(), s.current.clone());
    s.current = s.checkpoints["Before update"].clone();
    s.show()?;
    s.check("apply")?;

    let t = step(&mut n, "Another way: 8 MiB at 512 MiB");
    write(&s.leaf()?, &mut s.current, 512 * MIB, 8 * MIB, 5)?;
    took(t);
    take(&mut s, &mut n, "Alternative")?;

    let t = step(
        &mut n,
        "Export \"After update\" as a standalone VM (one flattened VHDX)",
    );
    let out = work.join("web-after-update");
    let _ = std::fs::remove_dir_all(&out);
    let ex = checkpoint::export(
        &OsFs,
        &dir,
        "After update",
        &out,
        &ExportOptions::default(),
        &mut |_, _| {},
    )?;
    took(t);
    println!(
        "   {} (VM {}): {}",
        ex.folder.display(),
        ex.vm_id,
        ex.disks[0].display()
    );
    s.bytes += verify(
        &ex.disks[0],
        &s.checkpoints["After update"],
        "the exported disk",
    )?;
    println!("   verified: the exported disk holds exactly \"After update\"");
    // qemu-img: check, and compare with the model written out raw.
    let raw = work.join("after-update.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&raw).map_err(err)?;
        f.set_len(SIZE).map_err(err)?;
        let m = &s.checkpoints["After update"];
        for &(at, len, _) in &m.writes {
            let mut buf = vec![0u8; len as usize];
            m.expect(at, &mut buf);
            f.write_all_at(&buf, at).map_err(err)?;
        }
    }
    let ex_disk = ex.disks[0].display().to_string();
    let raw_s = raw.display().to_string();
    match qemu(&["check", "-f", "vhdx", &ex_disk]) {
        None => println!("   qemu-img not installed: skipped qemu-img check and compare"),
        Some(Ok(out)) => {
            println!("   qemu-img check: {}", out.lines().next().unwrap_or(""));
            match qemu(&["compare", "-f", "vhdx", "-F", "raw", &ex_disk, &raw_s]) {
                Some(Ok(out)) => println!("   qemu-img compare with the model: {out}"),
                Some(Err(e)) => return Err(err(format!("qemu-img compare: {e}"))),
                None => {}
            }
        }
        Some(Err(e)) => return Err(err(format!("qemu-img check: {e}"))),
    }
    let _ = std::fs::remove_file(&raw);

    let t = step(
        &mut n,
        "Delete \"After update\" (its frozen disk is merged into the next layer)",
    );
    let d = checkpoint::delete(&OsFs, &dir, "After update", &mut |_, _| {})?;
    took(t);
    for (c, p, how) in &d.cleanup.merges {
        let n = |x: &Path| {
            x.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        };
        match how.as_str() {
            "down" => println!("   merged {} down into {}", n(c), n(p)),
            _ => println!(
                "   merged {} up into {}, which now builds on {}'s parent",
                n(p),
                n(c),
                n(p)
            ),
        }
    }
    s.checkpoints.remove("After update");
    s.show()?;
    s.check("delete")?;
    if let Some(py) = &py {
        oracles(&s.folder()?, py)?;
    }

    let t = step(&mut n, "Delete the subtree of \"Before update\" (all checkpoints): the VM is back on its base disk");
    let d = checkpoint::delete_subtree(&OsFs, &dir, "Before update", &mut |_, _| {})?;
    took(t);
    println!(
        "   removed {} checkpoints, {} merges, {} bytes copied",
        d.removed.len(),
        d.cleanup.merges.len(),
        d.cleanup.bytes_copied
    );
    s.checkpoints.clear();
    s.show()?;
    s.check("delete subtree")?;
    let f = s.folder()?;
    if f.disks[0].chain.len() != 1 {
        return Err(err("the disk should be a single file again"));
    }
    let files = std::fs::read_dir(dir.join("Virtual Hard Disks"))
        .map_err(err)?
        .count();
    println!("   Virtual Hard Disks/ holds {files} file; Snapshots/ is empty");
    match &py {
        Some(py) => oracles(&f, py)?,
        None => println!(
            "   dissect.hypervisor/pyvhdi not found (set HVKIT_PYTHON): skipped those cross-checks"
        ),
    }
    drop(tmp);
    println!(
        "\ndemo passed in {:.2} s ({:.2} GiB verified)",
        t0.elapsed().as_secs_f64(),
        s.bytes as f64 / (1u64 << 30) as f64
    );
    Ok(ExitCode::SUCCESS)
}
