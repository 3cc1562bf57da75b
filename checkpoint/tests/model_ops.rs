//! Random sequences of checkpoint operations (create, write to the
//! current disks, apply with and without saving the current state,
//! revert, rename, export, delete, delete subtree, type changes) against a
//! model of the tree and of every checkpoint's and the current disk
//! content, checked after every step through our reader: the tree, the
//! names, the current position, every disk's bytes, and that the folder
//! holds exactly the files something references. With HVKIT_PYTHON (CI),
//! every `.vmcx`/`.vmrs` is also opened in dissect.hypervisor, which must
//! see the same tree keys, and every disk chain is read by pyvhdi and
//! dissect.hypervisor, which must see the same bytes; every exported
//! flattened disk passes `qemu-img check` and `qemu-img compare` against
//! the model.

mod common;

use checkpoint::*;
use common::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

const SIZE: u64 = 4 << 20;
const DISKS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Write {
        disk: usize,
        off: u64,
        len: usize,
        byte: u8,
    },
    Create,
    Apply {
        pick: usize,
        save_current: bool,
    },
    Revert {
        save_current: bool,
    },
    Rename {
        pick: usize,
    },
    Export {
        pick: usize,
        keep_chain: bool,
    },
    Delete {
        pick: usize,
    },
    DeleteSubtree {
        pick: usize,
    },
    SetType {
        t: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..DISKS, 0..SIZE / 4096, 1usize..70_000, 1u8..255).prop_map(|(disk, o, len, byte)| Op::Write {
            disk,
            off: o * 4096 % (SIZE - 70_000),
            len,
            byte
        }),
        4 => Just(Op::Create),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, save_current)| Op::Apply { pick, save_current }),
        1 => any::<bool>().prop_map(|save_current| Op::Revert { save_current }),
        1 => any::<usize>().prop_map(|pick| Op::Rename { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, keep_chain)| Op::Export { pick, keep_chain }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::DeleteSubtree { pick }),
        1 => (2u8..=5).prop_map(|t| Op::SetType { t }),
    ]
}

#[derive(Debug, Clone)]
struct MCp {
    name: String,
    parent: Option<String>,
    disks: Vec<Vec<u8>>,
    ctype: CheckpointType,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct Model {
    cps: BTreeMap<String, MCp>,
    current: Option<String>,
    disks: Vec<Vec<u8>>,
    ctype: CheckpointType,
}

impl Model {
    /// Checkpoints oldest first (the reader's order: creation time, id).
    fn order(&self, f: &VmFolder) -> Vec<String> {
        f.checkpoints.iter().map(|c| c.id.clone()).collect()
    }
    fn kind_for(&self) -> Option<Kind> {
        match self.ctype {
            CheckpointType::Disabled => None,
            CheckpointType::Standard => Some(Kind::Standard),
            _ => Some(Kind::Production),
        }
    }
    fn save(&mut self, id: String, name: String) {
        let kind = self.kind_for().expect("enabled");
        self.cps.insert(
            id.clone(),
            MCp {
                name,
                parent: self.current.clone(),
                disks: self.disks.clone(),
                ctype: self.ctype,
                kind,
            },
        );
        self.current = Some(id);
    }
    fn remove(&mut self, ids: &[String]) {
        let set: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
        let up = |m: &Model, mut at: Option<String>| {
            while let Some(a) = at.clone() {
                if !set.contains(&a) {
                    return Some(a);
                }
                at = m.cps[&a].parent.clone();
            }
            None
        };
        let new_parents: Vec<(String, Option<String>)> = self
            .cps
            .iter()
            .filter(|(id, _)| !set.contains(*id))
            .map(|(id, c)| (id.clone(), up(self, c.parent.clone())))
            .collect();
        let cur = up(self, self.current.clone());
        for (id, p) in new_parents {
            self.cps.get_mut(&id).unwrap().parent = p;
        }
        self.current = cur;
        for id in ids {
            self.cps.remove(id);
        }
    }
    fn subtree(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut i = 0;
        while i < out.len() {
            let here = out[i].clone();
            for (c, m) in &self.cps {
                if m.parent.as_deref() == Some(here.as_str()) {
                    out.push(c.clone());
                }
            }
            i += 1;
        }
        out
    }
}

fn check(dir: &Path, m: &Model, oracle: Option<&(std::path::PathBuf, std::path::PathBuf)>) {
    let f = VmFolder::open(dir).unwrap();
    assert!(f.pending.is_none(), "left pending: {:?}", f.pending);
    assert_eq!(f.current, m.current, "current");
    assert_eq!(f.vm.checkpoint_type, Some(m.ctype), "checkpoint type");
    let ids: Vec<&String> = f.checkpoints.iter().map(|c| &c.id).collect();
    let want: Vec<&String> = m.cps.keys().collect();
    let mut ids_sorted = ids.clone();
    ids_sorted.sort();
    assert_eq!(ids_sorted, want, "checkpoints");
    for c in &f.checkpoints {
        let mc = &m.cps[&c.id];
        assert_eq!(c.name, mc.name);
        assert_eq!(c.parent, mc.parent, "parent of {}", c.id);
        assert_eq!(c.kind, mc.kind);
        assert!(!c.has_memory);
        assert_eq!(c.disks.len(), DISKS);
        for (i, d) in c.disks.iter().enumerate() {
            assert!(
                read_all(&d.path) == mc.disks[i],
                "checkpoint {} disk {i} content",
                c.id
            );
        }
    }
    assert_eq!(f.disks.len(), DISKS);
    for (i, d) in f.disks.iter().enumerate() {
        assert!(read_all(&d.path) == m.disks[i], "current disk {i} content");
    }
    assert_no_garbage(&f);
    // No layer is left that nothing names and only one disk builds on: it
    // would have been merged.
    let refs: std::collections::BTreeSet<_> = f.referenced().into_iter().collect();
    let mut kids: BTreeMap<std::path::PathBuf, std::collections::BTreeSet<std::path::PathBuf>> =
        BTreeMap::new();
    for d in f.every_disk() {
        for w in d.chain.windows(2) {
            kids.entry(w[1].clone()).or_default().insert(w[0].clone());
        }
    }
    for (p, k) in &kids {
        assert!(
            refs.contains(p) || k.len() != 1,
            "{} is a layer of its own with one child ({:?}) that nothing names",
            p.display(),
            k
        );
    }
    if let Some(o) = oracle {
        let mut configs = vec![f.config_path.display().to_string()];
        let mut disks = Vec::new();
        for c in &f.checkpoints {
            configs.push(c.config_path.display().to_string());
            configs.push(c.runtime_path.display().to_string());
        }
        if f.runtime_path.exists() {
            configs.push(f.runtime_path.display().to_string());
        }
        let mut want_sha = BTreeMap::new();
        for d in f.every_disk() {
            let chain: Vec<String> = d.chain.iter().map(|p| p.display().to_string()).collect();
            want_sha.insert(chain[0].clone(), sha(&read_all(&d.path)));
            disks.push(json!({ "chain": chain }));
        }
        let j = run_oracle(o, &json!({"configs": configs, "disks": disks}));
        for (leaf, s) in &want_sha {
            let got = &j["disks"][leaf];
            assert_eq!(got["pyvhdi"].as_str(), Some(s.as_str()), "pyvhdi {leaf}");
            assert_eq!(got["dissect"].as_str(), Some(s.as_str()), "dissect {leaf}");
        }
        // dissect sees the same tree.
        let vm = &j["configs"][f.config_path.display().to_string()]["values"];
        assert_eq!(
            vm["/configuration/hvkit/current_checkpoint"]
                .as_str()
                .unwrap_or(""),
            f.current.as_deref().unwrap_or("")
        );
        for c in &f.checkpoints {
            let v = &j["configs"][c.config_path.display().to_string()]["values"];
            assert_eq!(
                v["/configuration/hvkit/checkpoint/id"].as_str(),
                Some(c.id.as_str())
            );
            assert_eq!(
                v["/configuration/hvkit/checkpoint/name"].as_str(),
                Some(c.name.as_str())
            );
            assert_eq!(
                v["/configuration/hvkit/checkpoint/parent"].as_str(),
                Some(c.parent.as_deref().unwrap_or(""))
            );
            assert_eq!(
                v["/configuration/hvkit/checkpoint/vm_id"].as_str(),
                Some(f.vm.id.as_str())
            );
            assert_eq!(
                v["/configuration/hvkit/checkpoint/kind"].as_str(),
                Some(c.kind.name())
            );
        }
    }
}

fn run(ops: Vec<Op>, with_oracles: bool) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    let f = make_vm(&dir, "model", DISKS, SIZE);
    let oracle = if with_oracles { folder_oracle() } else { None };
    let qemu = with_oracles && qemu_img();
    let mut m = Model {
        cps: BTreeMap::new(),
        current: None,
        disks: vec![vec![0u8; SIZE as usize]; DISKS],
        ctype: f.vm.checkpoint_type.unwrap(),
    };
    let mut names = 0u32;
    let pick = |m: &Model, f: &VmFolder, p: usize| -> Option<String> {
        let o = m.order(f);
        (!o.is_empty()).then(|| o[p % o.len()].clone())
    };
    for op in ops {
        let f = VmFolder::open(&dir).unwrap();
        match op {
            Op::Write {
                disk,
                off,
                len,
                byte,
            } => {
                let data = vec![byte; len];
                write_disk(&f.disks[disk].path, off, &data);
                m.disks[disk][off as usize..off as usize + len].copy_from_slice(&data);
            }
            Op::Create => {
                names += 1;
                let name = format!("cp{names}");
                let r = create(
                    &OsFs,
                    &dir,
                    &CreateOptions {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    None,
                );
                match m.kind_for() {
                    None => assert!(matches!(r, Err(Error::Disabled { .. })), "{r:?}"),
                    Some(k) => {
                        let c = r.unwrap();
                        assert_eq!(c.kind, k);
                        m.save(c.id, name);
                    }
                }
            }
            Op::Apply { .. } | Op::Revert { .. } => {
                let (target, save_current) = match op {
                    Op::Apply {
                        pick: p,
                        save_current,
                    } => (pick(&m, &f, p), save_current),
                    Op::Revert { save_current } => (m.current.clone(), save_current),
                    _ => unreachable!(),
                };
                let opts = ApplyOptions {
                    save_current,
                    save_name: Some("saved".into()),
                };
                let r = match &op {
                    Op::Revert { .. } => revert(&OsFs, &dir, &opts),
                    _ => match &target {
                        Some(t) => apply(&OsFs, &dir, t, &opts),
                        None => continue,
                    },
                };
                let Some(target) = target else {
                    assert!(r.is_err(), "revert without a current checkpoint: {r:?}");
                    continue;
                };
                if save_current && m.kind_for().is_none() {
                    assert!(matches!(r, Err(Error::Disabled { .. })), "{r:?}");
                    continue;
                }
                let a = r.unwrap();
                assert_eq!(a.target, target);
                if save_current {
                    m.save(a.saved_as.clone().unwrap(), "saved".into());
                }
                let c = m.cps[&target].clone();
                m.disks = c.disks.clone();
                m.ctype = c.ctype;
                m.current = Some(target);
            }
            Op::Rename { pick: p } => {
                let Some(id) = pick(&m, &f, p) else { continue };
                names += 1;
                let name = format!("renamed{names}");
                assert_eq!(rename(&OsFs, &dir, &id, &name).unwrap(), id);
                m.cps.get_mut(&id).unwrap().name = name;
            }
            Op::Export {
                pick: p,
                keep_chain,
            } => {
                let Some(id) = pick(&m, &f, p) else { continue };
                let out = t.path().join("export");
                let ex = export(
                    &OsFs,
                    &dir,
                    &id,
                    &out,
                    &ExportOptions {
                        keep_chain,
                        keep_id: false,
                    },
                    &mut |_, _| {},
                )
                .unwrap();
                let g = VmFolder::open(&ex.folder).unwrap();
                assert_ne!(g.vm.id, f.vm.id);
                assert!(g.checkpoints.is_empty());
                assert_eq!(g.current, None);
                assert_eq!(g.disks.len(), DISKS);
                for (i, d) in g.disks.iter().enumerate() {
                    assert!(d.path.starts_with(&ex.folder));
                    assert_eq!(
                        d.chain.len() == 1,
                        !keep_chain || f.checkpoint(&id).unwrap().disks[i].chain.len() == 1
                    );
                    let content = read_all(&d.path);
                    assert!(content == m.cps[&id].disks[i], "export disk {i}");
                    if qemu && !keep_chain {
                        let raw = t.path().join("model.raw");
                        std::fs::write(&raw, &m.cps[&id].disks[i]).unwrap();
                        let c = std::process::Command::new("qemu-img")
                            .args(["check", "-f", "vhdx"])
                            .arg(&d.path)
                            .output()
                            .unwrap();
                        assert!(
                            c.status.success(),
                            "qemu-img check: {}",
                            String::from_utf8_lossy(&c.stdout)
                        );
                        let c = std::process::Command::new("qemu-img")
                            .args(["compare", "-f", "vhdx", "-F", "raw"])
                            .arg(&d.path)
                            .arg(&raw)
                            .output()
                            .unwrap();
                        assert!(
                            c.status.success(),
                            "qemu-img compare: {}",
                            String::from_utf8_lossy(&c.stdout)
                        );
                    }
                }
                assert_no_garbage(&g);
                std::fs::remove_dir_all(&out).unwrap();
            }
            Op::Delete { pick: p } => {
                let Some(id) = pick(&m, &f, p) else { continue };
                let d = delete(&OsFs, &dir, &id, &mut |_, _| {}).unwrap();
                assert_eq!(d.removed, vec![id.clone()]);
                m.remove(&[id]);
            }
            Op::DeleteSubtree { pick: p } => {
                let Some(id) = pick(&m, &f, p) else { continue };
                let want = m.subtree(&id);
                let d = delete_subtree(&OsFs, &dir, &id, &mut |_, _| {}).unwrap();
                let mut got = d.removed.clone();
                got.sort();
                let mut w = want.clone();
                w.sort();
                assert_eq!(got, w);
                m.remove(&want);
            }
            Op::SetType { t } => {
                let ct = CheckpointType::from_value(t as i64).unwrap();
                set_checkpoint_type(&OsFs, &dir, ct).unwrap();
                m.ctype = ct;
            }
        }
        check(&dir, &m, oracle.as_ref());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn operations_match_the_model(ops in proptest::collection::vec(op(), 1..28)) {
        run(ops, false);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, max_shrink_iters: 50, ..ProptestConfig::default() })]
    /// The same with the oracles after every step (a few cases: each step
    /// starts Python).
    #[test]
    fn operations_match_the_model_and_the_oracles(ops in proptest::collection::vec(op(), 4..16)) {
        run(ops, true);
    }
}

/// A fixed sequence that reaches every merge shape: branches kept as
/// shared layers, merged later, a subtree with the current state in it.
#[test]
fn a_branching_story() {
    use Op::*;
    let w = |disk, off, byte| Write {
        disk,
        off,
        len: 5000,
        byte,
    };
    run(
        vec![
            w(0, 0, 1),
            Create,
            w(0, 4096, 2),
            w(1, 8192, 3),
            Create,
            w(0, 0, 4),
            Create,
            Apply {
                pick: 0,
                save_current: false,
            },
            w(1, 0, 5),
            Create,
            Apply {
                pick: 1,
                save_current: true,
            },
            w(0, 0, 6),
            Delete { pick: 0 },
            Delete { pick: 0 },
            w(1, 12288, 7),
            Create,
            DeleteSubtree { pick: 1 },
            Revert { save_current: true },
            Delete { pick: 0 },
            Delete { pick: 0 },
            Delete { pick: 0 },
            Delete { pick: 0 },
        ],
        true,
    );
}
