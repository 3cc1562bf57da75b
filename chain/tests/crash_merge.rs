//! Crash injection over merges. Every file of a merge lives in memory
//! behind one shared counter that lets the first N writes, size changes,
//! flushes and removals through and fails everything after; writes since
//! each file's last flush are then lost, kept, or a random subset kept (in
//! order). For every N the files as they would be after the crash are put
//! back on disk and must (a) open, every disk reading exactly what it read
//! before the merge, every file passing `check`, and (b) let the same merge
//! run again to completion with the same content.

mod common;

use chain::{Files, MergeOptions};
use common::*;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vhdx::{OpenOptions, Storage, VhdxFile};

#[derive(Default)]
struct Domain {
    ops: u64,
    crash_after: Option<u64>,
    crashed: bool,
    /// Instead of a crash, fail only the one operation (a full disk, an
    /// I/O error) and let every later one through: the merge goes on
    /// running after the error (its error paths, and what dropping its
    /// files does).
    fail_once: bool,
    failed: bool,
}

impl Domain {
    fn step(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other("injected crash"));
        }
        self.ops += 1;
        if self.crash_after.is_some_and(|n| self.ops > n) {
            if self.fail_once {
                if self.failed {
                    return Ok(());
                }
                self.failed = true;
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected: no space left on device",
                ));
            }
            self.crashed = true;
            return Err(io::Error::other("injected crash"));
        }
        Ok(())
    }
    fn injected(&self) -> bool {
        self.crashed || self.failed
    }
}

enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(b: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(o, d) => {
            let o = *o as usize;
            if b.len() < o + d.len() {
                b.resize(o + d.len(), 0);
            }
            b[o..o + d.len()].copy_from_slice(d);
        }
        Op::SetLen(n) => b.resize(*n as usize, 0),
    }
}

struct FileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    unflushed: Vec<Op>,
}

struct CrashFile {
    state: Mutex<FileState>,
    domain: Arc<Mutex<Domain>>,
}

impl Storage for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state.lock().unwrap();
        let o = offset as usize;
        let src = s
            .current
            .get(o..o + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.domain.lock().unwrap().step()?;
        let mut s = self.state.lock().unwrap();
        let op = Op::Write(offset, buf.to_vec());
        apply(&mut s.current, &op);
        s.unflushed.push(op);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.domain.lock().unwrap().step()?;
        let mut s = self.state.lock().unwrap();
        let ops = std::mem::take(&mut s.unflushed);
        for op in &ops {
            apply(&mut s.durable, op);
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.domain.lock().unwrap().step()?;
        let mut s = self.state.lock().unwrap();
        let op = Op::SetLen(len);
        apply(&mut s.current, &op);
        s.unflushed.push(op);
        Ok(())
    }
}

/// The merge's files, in memory.
struct MemFs {
    files: Mutex<BTreeMap<PathBuf, Arc<CrashFile>>>,
    domain: Arc<Mutex<Domain>>,
}

impl MemFs {
    fn load(paths: &[PathBuf], crash_after: Option<u64>, fail_once: bool) -> MemFs {
        let domain = Arc::new(Mutex::new(Domain {
            crash_after,
            fail_once,
            ..Domain::default()
        }));
        let files = paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| {
                let b = std::fs::read(p).unwrap();
                let f = CrashFile {
                    state: Mutex::new(FileState {
                        durable: b.clone(),
                        current: b,
                        unflushed: Vec::new(),
                    }),
                    domain: domain.clone(),
                };
                (p.clone(), Arc::new(f))
            })
            .collect();
        MemFs {
            files: Mutex::new(files),
            domain,
        }
    }

    /// Writes what each file holds after the crash back to disk (`keep`
    /// picks the unflushed operations that reached it); removed files are
    /// removed.
    fn store_after_crash(&self, all: &[PathBuf], keep: &mut dyn FnMut() -> bool) {
        let files = self.files.lock().unwrap();
        for p in all {
            match files.get(p) {
                None => {
                    let _ = std::fs::remove_file(p);
                }
                Some(f) => {
                    let s = f.state.lock().unwrap();
                    let mut b = s.durable.clone();
                    for op in &s.unflushed {
                        if keep() {
                            apply(&mut b, op);
                        }
                    }
                    std::fs::write(p, b).unwrap();
                }
            }
        }
    }
}

impl Files for MemFs {
    fn open(&self, path: &Path, writable: bool) -> vhdx::Result<VhdxFile> {
        let f = self
            .files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| vhdx::Error::Io {
                path: path.display().to_string(),
                offset: 0,
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
        let o = if writable {
            OpenOptions::writable()
        } else {
            OpenOptions::read_only()
        };
        VhdxFile::open(Box::new(f), &path.display().to_string(), o)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.domain.lock().unwrap().step()?;
        self.files.lock().unwrap().remove(path);
        Ok(())
    }
}

/// A scenario: files made in `dir`, the merge to run, and the disks whose
/// content must never change.
#[derive(Clone)]
struct Scenario {
    name: &'static str,
    all: Vec<PathBuf>,
    child: PathBuf,
    into: Option<PathBuf>,
    /// The target's file name when `into` is not given (the child's parent).
    parent: PathBuf,
    up: bool,
}

impl Scenario {
    /// The file whose own content the merge changes (none for an upward
    /// merge: the child shows the same, the parent is only read).
    fn target(&self) -> PathBuf {
        if self.up {
            return PathBuf::new();
        }
        self.into.clone().unwrap_or_else(|| self.parent.clone())
    }
    fn plan_options(&self) -> chain::PlanOptions {
        let mut o = down(self.into.as_deref());
        if self.up {
            o.direction = chain::DirectionChoice::Up;
        }
        o
    }
}

fn build(dir: &Path, which: usize) -> Scenario {
    let p = |n: &str| dir.join(n);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ which as u64);
    match which {
        // base <- c1 <- {c2 (leaf), branch}: merge c1 into base; both
        // children are re-pointed.
        0 => {
            new_base(&p("base.vhdx"), 6 * MIB, MIB as u32, 512);
            scribble(&p("base.vhdx"), &mut rng, 6);
            new_child(&p("c1.avhdx"), &p("base.vhdx"), None, MIB as u32);
            scribble(&p("c1.avhdx"), &mut rng, 10);
            new_child(&p("c2.avhdx"), &p("c1.avhdx"), None, MIB as u32);
            scribble(&p("c2.avhdx"), &mut rng, 4);
            new_child(&p("branch.avhdx"), &p("c1.avhdx"), None, 2 * MIB as u32);
            scribble(&p("branch.avhdx"), &mut rng, 3);
            Scenario {
                name: "c1 into base, two children",
                all: ["base.vhdx", "c1.avhdx", "c2.avhdx", "branch.avhdx"]
                    .map(p)
                    .to_vec(),
                child: p("c1.avhdx"),
                into: None,
                parent: p("base.vhdx"),
                up: false,
            }
        }
        // base <- mid <- c1 <- g: merge mid up into c1 (c1 takes mid's
        // data and is re-pointed at base; g is untouched).
        3 => {
            new_base(&p("base.vhdx"), 6 * MIB, MIB as u32, 512);
            scribble(&p("base.vhdx"), &mut rng, 6);
            new_child(&p("mid.avhdx"), &p("base.vhdx"), None, 2 * MIB as u32);
            scribble(&p("mid.avhdx"), &mut rng, 10);
            new_child(&p("c1.avhdx"), &p("mid.avhdx"), Some(7 * MIB), MIB as u32);
            scribble(&p("c1.avhdx"), &mut rng, 5);
            new_child(&p("g.avhdx"), &p("c1.avhdx"), None, MIB as u32);
            scribble(&p("g.avhdx"), &mut rng, 3);
            Scenario {
                name: "mid up into c1, which has a child",
                all: ["base.vhdx", "mid.avhdx", "c1.avhdx", "g.avhdx"]
                    .map(p)
                    .to_vec(),
                child: p("c1.avhdx"),
                into: None,
                parent: p("mid.avhdx"),
                up: true,
            }
        }
        // base <- c1 <- c2 <- c3: merge c3 into c1 (two layers into a
        // differencing target; bitmaps merged), 4 KiB sectors, c3 larger.
        1 => {
            new_base(&p("base.vhdx"), 5 * MIB, MIB as u32, 4096);
            scribble(&p("base.vhdx"), &mut rng, 5);
            new_child(&p("c1.avhdx"), &p("base.vhdx"), None, MIB as u32);
            scribble(&p("c1.avhdx"), &mut rng, 6);
            new_child(&p("c2.avhdx"), &p("c1.avhdx"), None, 2 * MIB as u32);
            scribble(&p("c2.avhdx"), &mut rng, 6);
            new_child(&p("c3.avhdx"), &p("c2.avhdx"), Some(7 * MIB), MIB as u32);
            scribble(&p("c3.avhdx"), &mut rng, 6);
            Scenario {
                name: "c3 into c1 (two layers, differencing target, larger child)",
                all: ["base.vhdx", "c1.avhdx", "c2.avhdx", "c3.avhdx"]
                    .map(p)
                    .to_vec(),
                child: p("c3.avhdx"),
                into: Some(p("c1.avhdx")),
                parent: p("c2.avhdx"),
                up: false,
            }
        }
        // base <- c1 (leaf): the leaf itself into the base.
        2 => {
            new_base(&p("base.vhdx"), 4 * MIB, 2 * MIB as u32, 512);
            scribble(&p("base.vhdx"), &mut rng, 4);
            new_child(&p("c1.avhdx"), &p("base.vhdx"), None, MIB as u32);
            scribble(&p("c1.avhdx"), &mut rng, 8);
            Scenario {
                name: "leaf into base",
                all: ["base.vhdx", "c1.avhdx"].map(p).to_vec(),
                child: p("c1.avhdx"),
                into: None,
                parent: p("base.vhdx"),
                up: false,
            }
        }
        _ => unreachable!("no scenario {which}"),
    }
}

/// After a crash (files on disk): every disk that still exists reads what it
/// read before the merge (the target aside: its own content is what the
/// merge changes); once the merged child is gone, the target reads what the
/// child read. Every file passes `check`.
fn check_state(s: &Scenario, expect: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let target = s.target();
    for p in &s.all {
        if !p.exists() {
            continue;
        }
        let r = vhdx::check::check_path(p, false)
            .unwrap_or_else(|e| panic!("{what}: {} does not check: {e}", p.display()));
        assert!(
            !r.is_corrupt(),
            "{what}: {} has problems: {:?}",
            p.display(),
            r.problems
        );
    }
    for p in &s.all {
        let shown = if p.exists() {
            p
        } else if *p == s.child {
            &target
        } else {
            continue;
        };
        if *p == target {
            continue;
        }
        let got = read_all(shown);
        if let Some(at) = first_diff(&got, &expect[p]) {
            panic!(
                "{what}: {} (read through {}) differs from before at {at:#x}",
                p.display(),
                shown.display()
            );
        }
    }
}

fn run_scenario(which: usize) -> usize {
    let pristine = scratch();
    let pdir = pristine.path().canonicalize().unwrap();
    let s0 = build(&pdir, which);
    let work = scratch();
    let wdir = work.path().canonicalize().unwrap();
    let p = |q: &Path| wdir.join(q.file_name().unwrap());
    let s = Scenario {
        name: s0.name,
        all: s0.all.iter().map(|q| p(q)).collect(),
        child: p(&s0.child),
        into: s0.into.as_deref().map(p),
        parent: p(&s0.parent),
        up: s0.up,
    };
    let expect: BTreeMap<PathBuf, Vec<u8>> = s0
        .all
        .iter()
        .zip(&s.all)
        .map(|(q, w)| (w.clone(), read_all(q)))
        .collect();
    let restore = || {
        for (src, dst) in s0.all.iter().zip(&s.all) {
            std::fs::copy(src, dst).unwrap();
        }
    };
    let mut points = 0;
    let mut reruns_other_way = 0;
    let mut rng = Rng(0xC0FFEE + which as u64);
    // The same plan every time: the files start from the same bytes.
    restore();
    let first_plan = chain::plan(&s.child, &s.plan_options())
        .unwrap_or_else(|e| panic!("{}: plan: {e}", s.name));
    let removed = plan_layers_merged(&s0, &s);
    let pristine_len: BTreeMap<PathBuf, u64> = s0
        .all
        .iter()
        .zip(&s.all)
        .map(|(q, w)| (w.clone(), std::fs::metadata(q).unwrap().len()))
        .collect();
    // Modes 0-2 crash after n operations (unflushed writes lost, kept, a
    // random subset kept); mode 3 fails operation n+1 alone and the
    // process goes on (nothing is lost).
    for mode in 0..4 {
        let mut n = 0u64;
        loop {
            restore();
            let plan = &first_plan;
            let fs = MemFs::load(&s.all, Some(n), mode == 3);
            let result = chain::merge(&fs, plan, &MergeOptions::default(), &mut |_, _| {});
            let what = if mode == 3 {
                format!("{} (operation {} fails)", s.name, n + 1)
            } else {
                format!("{} (mode {mode}, crash after {n} ops)", s.name)
            };
            let injected = fs.domain.lock().unwrap().injected();
            if result.is_ok() {
                fs.store_after_crash(&s.all, &mut || true);
                check_state(&s, &expect, &what);
                if !injected {
                    // Nothing was left to inject: the merge completed in
                    // memory.
                    break;
                }
                // The failed operation was one the merge may do without
                // (best effort); it completed all the same.
                assert_eq!(mode, 3, "{what}");
                n += 1;
                continue;
            }
            assert!(injected, "{what}: {:?}", result.err());
            points += 1;
            let mut keep = || match mode {
                0 => false,
                1 | 3 => true,
                _ => rng.below(2) == 0,
            };
            fs.store_after_crash(&s.all, &mut keep);
            drop(fs);
            check_state(&s, &expect, &what);
            if mode == 3 {
                no_space_left_behind(&s, &pristine_len, &what);
            }
            // Running the merge again completes it, unless the crash came
            // after its last durable step. Modes 0 and 1 re-run the same
            // merge; mode 2 lets the re-run pick its direction (what
            // `hvkit merge CHILD` does after a crash), which may go the
            // other way than the first run: it must complete either way.
            let complete = removed.iter().all(|l| !l.exists()) && (!s.up || !has_marker(&s.child));
            let mut done = s.clone();
            let mut gone = removed.clone();
            if !complete {
                let mut again = s.plan_options();
                if mode == 2 {
                    again.direction = chain::DirectionChoice::Auto;
                }
                let plan = chain::plan(&s.child, &again)
                    .unwrap_or_else(|e| panic!("{what}: plan again: {e}"));
                let up = plan.direction == chain::Direction::Up;
                if up != s.up {
                    reruns_other_way += 1;
                    done.up = up;
                    gone = if up {
                        plan.layers[1..].to_vec()
                    } else {
                        plan.layers[..plan.layers.len() - 1].to_vec()
                    };
                    if !up {
                        done.parent = plan.layers.last().unwrap().clone();
                    }
                }
                chain::merge(
                    &chain::OsFiles,
                    &plan,
                    &MergeOptions::default(),
                    &mut |_, _| {},
                )
                .unwrap_or_else(|e| panic!("{what}: merge again: {e}"));
            }
            if done.up {
                assert!(
                    !has_marker(&done.child),
                    "{what}: absorbed-parent marker left behind"
                );
            }
            check_state(&done, &expect, &format!("{what}, merged again"));
            // The re-run gave back what the cut-off attempt had allocated
            // and not committed (new blocks would otherwise land after it).
            no_space_left_behind(&done, &pristine_len, &format!("{what}, merged again"));
            for l in &gone {
                assert!(!l.exists(), "{what}: {} was not removed", l.display());
            }
            n += 1;
        }
    }
    println!("{}: {reruns_other_way} re-runs went the other way", s.name);
    points
}

/// After a failed (not crashed) merge, or a re-run after any stop, no file
/// holds space past what it references beyond its own length before the
/// merge: allocations never committed were given back.
fn no_space_left_behind(s: &Scenario, pristine_len: &BTreeMap<PathBuf, u64>, what: &str) {
    for p in s.all.iter().filter(|p| p.exists()) {
        let f = VhdxFile::open_path(p, OpenOptions::read_only()).unwrap();
        let allowed = pristine_len[p].max(f.used_end());
        assert!(
            f.file_len() <= allowed,
            "{what}: {} is {} bytes, of which only {allowed} are referenced or were there before",
            p.display(),
            f.file_len()
        );
    }
}

/// True when the locator of `path` still names an absorbed parent.
fn has_marker(path: &Path) -> bool {
    VhdxFile::open_path(path, OpenOptions::read_only())
        .unwrap()
        .parent_locator()
        .is_some_and(|l| l.get(chain::ABSORBED_KEY).is_some() || l.get("parent_linkage2").is_some())
}

/// The files the completed merge must have removed.
fn plan_layers_merged(s0: &Scenario, s: &Scenario) -> Vec<PathBuf> {
    let plan = chain::plan(&s0.child, &s0.plan_options()).unwrap();
    let gone = if s0.up {
        &plan.layers[1..]
    } else {
        &plan.layers[..plan.layers.len() - 1]
    };
    gone.iter()
        .map(|l| {
            s.all
                .iter()
                .find(|a| a.file_name() == l.file_name())
                .unwrap()
                .clone()
        })
        .collect()
}

// 4 scenarios x (3 ways unflushed writes end up after a crash + a failed
// operation the merge survives): at least 500 crash points in all (each
// test prints its count).

#[test]
fn crash_merging_a_layer_with_two_children_into_the_base() {
    let n = run_scenario(0);
    println!("crash points: {n}");
    assert!(n >= 250, "only {n} crash points");
}

#[test]
fn crash_merging_two_layers_into_a_differencing_target() {
    let n = run_scenario(1);
    println!("crash points: {n}");
    assert!(n >= 200, "only {n} crash points");
}

#[test]
fn crash_merging_the_leaf_into_the_base() {
    let n = run_scenario(2);
    println!("crash points: {n}");
    assert!(n >= 50, "only {n} crash points");
}

#[test]
fn crash_merging_a_parent_up_into_its_child() {
    let n = run_scenario(3);
    println!("crash points: {n}");
    assert!(n >= 100, "only {n} crash points");
}
