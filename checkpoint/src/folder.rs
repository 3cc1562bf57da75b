//! [`VmFolder`]: a VM folder read into the VM, its disks with their chains,
//! and the checkpoint tree, with a pending operation's effect applied
//! (`journal.rs`): the folder always reads as before or as after an
//! operation, never half-way.

use crate::config::{is_xml, Config, DiskDrive};
use crate::disks::DiskCache;
use crate::error::{Error, Result};
use crate::journal::Pending;
use crate::keys;
use crate::layout::{self, SNAPSHOT_DIR, VM_DIR};
use crate::model::{Checkpoint, Disk, Kind, Vm, VmState};
use crate::tree::{self, Node};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How to open a folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Report a missing disk or a disk outside the chain it should be in
    /// as a problem (see [`VmFolder::problems`]) instead of failing.
    pub lenient: bool,
}

/// A VM folder, read.
#[derive(Debug, Clone)]
pub struct VmFolder {
    /// The VM folder (holding `Virtual Machines/`), canonical.
    pub folder: PathBuf,
    /// `Virtual Machines/<VMID>.vmcx` (or `.xml`).
    pub config_path: PathBuf,
    /// `Virtual Machines/<VMID>.vmrs` (it may not exist).
    pub runtime_path: PathBuf,
    /// Where the checkpoint files are.
    pub snapshot_dir: PathBuf,
    /// A 2012 R2 folder (XML configurations): read-only here.
    pub legacy: bool,
    pub vm: Vm,
    /// The attached virtual hard disks; `path` is the current leaf.
    pub disks: Vec<Disk>,
    /// Every checkpoint, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// The checkpoint the current state derives from.
    pub current: Option<String>,
    /// An operation that was cut off (its effect is already applied to
    /// this view as described in `journal.rs`).
    pub pending: Option<Pending>,
    /// What a lenient open found wrong.
    pub problems: Vec<String>,
    /// The VM configuration's keys, as the file holds them.
    pub config: Config,
    /// Each checkpoint's configuration, by id.
    pub checkpoint_configs: BTreeMap<String, Config>,
}

/// Where the VM's configuration is, for a folder or a configuration path.
pub fn find_config(path: &Path) -> Result<PathBuf> {
    let not = |why: String| Error::NotAVmFolder {
        path: path.to_path_buf(),
        why,
    };
    if path.is_file() {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        return match ext.as_deref() {
            Some("vmcx") | Some("xml") => Ok(path.to_path_buf()),
            _ => Err(not("a VM folder or a <VMID>.vmcx file is expected".into())),
        };
    }
    if !path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let vm_dir = path.join(VM_DIR);
    let dir = if vm_dir.is_dir() {
        vm_dir
    } else {
        path.to_path_buf()
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for ext in ["vmcx", "xml"] {
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for e in rd {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            let stem_ok = p
                .file_stem()
                .is_some_and(|s| layout::is_id(&s.to_string_lossy()));
            if stem_ok && p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)) {
                found.push(p);
            }
        }
        if !found.is_empty() {
            break;
        }
    }
    found.sort();
    match found.len() {
        0 => Err(not(format!(
            "no <VMID>.vmcx (or 2012 R2 <VMID>.xml) in {}",
            dir.display()
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(not(format!(
            "{} holds {} VM configurations ({}); name the one to open",
            dir.display(),
            found.len(),
            found
                .iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl VmFolder {
    /// Opens a VM folder or the `<VMID>.vmcx` (or `.xml`) inside one.
    pub fn open(path: impl AsRef<Path>) -> Result<VmFolder> {
        Self::open_with(path, OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: OpenOptions) -> Result<VmFolder> {
        Self::open_cached(path, opts, &mut DiskCache::new())
    }

    /// [`VmFolder::open_with`], reusing the disk files `cache` already
    /// opened (an operation re-reads its folder after each step; the
    /// caller forgets the files it changes).
    pub fn open_cached(
        path: impl AsRef<Path>,
        opts: OpenOptions,
        cache: &mut DiskCache,
    ) -> Result<VmFolder> {
        let config_path = find_config(path.as_ref())?;
        let config_path =
            std::fs::canonicalize(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = cache.config(&config_path)?;
        Reader {
            opts,
            cache,
            problems: Vec::new(),
        }
        .read(config_path, config)
    }

    /// The checkpoint named `what`: an id (any case), or a name when only
    /// one checkpoint has it.
    pub fn find(&self, what: &str) -> Result<&Checkpoint> {
        if let Some(c) = self
            .checkpoints
            .iter()
            .find(|c| c.id.eq_ignore_ascii_case(what))
        {
            return Ok(c);
        }
        let named: Vec<&Checkpoint> = self.checkpoints.iter().filter(|c| c.name == what).collect();
        match named.len() {
            1 => Ok(named[0]),
            0 => Err(Error::NoSuchCheckpoint {
                folder: self.folder.clone(),
                what: what.to_string(),
            }),
            _ => Err(Error::AmbiguousName {
                folder: self.folder.clone(),
                name: what.to_string(),
                ids: named.iter().map(|c| c.id.clone()).collect(),
            }),
        }
    }

    pub fn checkpoint(&self, id: &str) -> Option<&Checkpoint> {
        self.checkpoints.iter().find(|c| c.id == id)
    }

    /// The tree's nodes.
    pub fn nodes(&self) -> Vec<Node> {
        self.checkpoints
            .iter()
            .map(|c| Node {
                id: c.id.clone(),
                parent: c.parent.clone(),
            })
            .collect()
    }

    /// Every disk of the current state, then each checkpoint's.
    pub fn every_disk(&self) -> impl Iterator<Item = &Disk> {
        self.disks
            .iter()
            .chain(self.checkpoints.iter().flat_map(|c| c.disks.iter()))
    }

    /// Every disk file a checkpoint or the current state names directly
    /// (frozen disks and current leaves).
    pub fn referenced(&self) -> Vec<PathBuf> {
        let set: HashSet<&Path> = self.every_disk().map(|d| d.path.as_path()).collect();
        let mut v: Vec<PathBuf> = set.into_iter().map(Path::to_path_buf).collect();
        v.sort();
        v
    }

    /// Every file of every chain the VM and its checkpoints use.
    pub fn all_disk_files(&self) -> Vec<PathBuf> {
        let set: HashSet<&Path> = self
            .every_disk()
            .flat_map(|d| d.chain.iter().map(PathBuf::as_path))
            .collect();
        let mut v: Vec<PathBuf> = set.into_iter().map(Path::to_path_buf).collect();
        v.sort();
        v
    }
}

struct Reader<'c> {
    opts: OpenOptions,
    cache: &'c mut DiskCache,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn fail(&mut self, e: Error) -> Result<()> {
        if self.opts.lenient {
            self.problems.push(e.to_string());
            Ok(())
        } else {
            Err(e)
        }
    }

    /// The disks of a configuration, resolved; `substitute` maps a named
    /// path to the file that holds its content now.
    fn disks(
        &mut self,
        folder: &Path,
        config: &Config,
        substitute: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Vec<Disk>> {
        let mut out = Vec::new();
        for DiskDrive { slot, pathname } in config.disk_drives() {
            let Some(found) =
                layout::resolve_disk_with(&pathname, folder, &config.path, substitute)
            else {
                self.fail(Error::corrupt(
                    &config.path,
                    format!("the disk of {slot}, {pathname}, is missing"),
                ))?;
                continue;
            };
            let path = substitute(&found);
            match self.cache.chain(&path) {
                Ok(chain) => {
                    let facts = self.cache.facts(&chain[0]).expect("loaded");
                    out.push(Disk {
                        slot,
                        pathname,
                        path: chain[0].clone(),
                        chain,
                        virtual_size: facts.virtual_size,
                    });
                }
                Err(e) => self.fail(e)?,
            }
        }
        Ok(out)
    }

    fn read(mut self, config_path: PathBuf, config: Config) -> Result<VmFolder> {
        let legacy = is_xml(&config_path);
        let vm_dir = config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let folder = if vm_dir
            .file_name()
            .is_some_and(|n| n.eq_ignore_ascii_case(VM_DIR))
        {
            vm_dir.parent().unwrap_or(&vm_dir).to_path_buf()
        } else {
            vm_dir.clone()
        };
        if !vmcx::VmConfig::is_vm(&config.tree) {
            return Err(Error::NotAVmFolder {
                path: config_path,
                why: "the file is not a VM configuration (no /configuration/properties/name or global_id)"
                    .into(),
            });
        }
        if config.string(keys::CP_ID).is_some() {
            return Err(Error::NotAVmFolder {
                path: config_path,
                why: "this is a checkpoint's configuration; open the VM folder".into(),
            });
        }
        let id = config.required_string(keys::GLOBAL_ID)?;
        let pending = match config.string(keys::PENDING) {
            Some(s) if !s.is_empty() => Some(
                Pending::from_json(&s)
                    .map_err(|e| Error::corrupt(&config.path, format!("{}: {e}", keys::PENDING)))?,
            ),
            _ => None,
        };
        let cleanup = match &pending {
            Some(Pending::Cleanup(c)) => Some(c.clone()),
            _ => None,
        };
        let substitute = |p: &Path| match &cleanup {
            Some(c) => c.substitute(p),
            None => p.to_path_buf(),
        };
        let vmc = config.vm_config();
        let snapshot_root = config
            .string(keys::SNAPSHOT_DATA_ROOT)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.join(SNAPSHOT_DIR).is_dir())
            .unwrap_or_else(|| folder.clone());
        let snapshot_dir = snapshot_root.join(SNAPSHOT_DIR);
        let runtime_path = layout::runtime_path(&config_path);
        let runtime_now = match &cleanup {
            Some(c) => c.source_of(&runtime_path),
            None => runtime_path.clone(),
        };
        let state = if legacy {
            legacy_state(&vm_dir, &id)
        } else {
            if self.cache.has_memory(&runtime_now)? {
                VmState::Saved
            } else {
                VmState::Off
            }
        };
        let vm = Vm {
            name: vmc.name.clone().unwrap_or_default(),
            id: id.clone(),
            generation: vmc.generation,
            memory_mb: vmc.memory.startup_mb,
            processors: vmc.processors,
            checkpoint_type: vmc.checkpoint_type,
            checkpoint_type_raw: vmc.checkpoint_type_raw,
            version: vmc.version,
            checkpoint_location: snapshot_root,
            state,
        };
        let disks = self.disks(&folder, &config, &substitute)?;

        // Checkpoints: every configuration in the snapshot folder that
        // belongs to this VM.
        let hidden: Vec<String> = pending
            .iter()
            .flat_map(|p| p.hidden())
            .map(str::to_string)
            .collect();
        let mut checkpoints = Vec::new();
        let mut configs: BTreeMap<String, Config> = BTreeMap::new();
        let mut files_of: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in snapshot_files(&snapshot_dir, legacy)? {
            let c = self.cache.config(&path)?;
            let cid = c.string(keys::CP_ID).unwrap_or_else(|| file_stem(&path));
            let owner = c
                .string(keys::CP_VM_ID)
                .or_else(|| c.string(keys::LOGICAL_ID))
                .or_else(|| c.string(keys::GLOBAL_ID));
            if !owner.is_some_and(|o| o.eq_ignore_ascii_case(&id)) {
                continue; // another VM's checkpoint (a shared Snapshots folder)
            }
            if hidden.iter().any(|h| h.eq_ignore_ascii_case(&cid)) {
                continue;
            }
            if let Some(other) = files_of.get(&cid) {
                return Err(Error::corrupt(
                    &path,
                    format!(
                        "{} holds the same checkpoint id {cid}; two checkpoints cannot share one",
                        other.display()
                    ),
                ));
            }
            files_of.insert(cid.clone(), path.clone());
            let has_tree_keys = c.string(keys::CP_ID).is_some();
            let parent = match &cleanup {
                Some(cl) => match cl.parent_override(&cid) {
                    Some(p) => p,
                    None => c.string(keys::CP_PARENT).filter(|p| !p.is_empty()),
                },
                None => c.string(keys::CP_PARENT).filter(|p| !p.is_empty()),
            };
            let runtime = if legacy {
                snapshot_dir.join(&cid)
            } else {
                layout::runtime_path(&path)
            };
            let has_memory = if legacy {
                has_legacy_memory(&runtime)
            } else {
                self.cache.has_memory(&runtime)?
            };
            let kind = match c.string(keys::CP_KIND) {
                Some(k) => Kind::parse(&k).ok_or_else(|| {
                    Error::corrupt(&path, format!("{}: unknown kind {k:?}", keys::CP_KIND))
                })?,
                None if has_memory => Kind::Standard,
                None => Kind::Production,
            };
            let created = match c.int(keys::CP_CREATED) {
                Some(t) => u64::try_from(t).map_err(|_| {
                    Error::corrupt(&path, format!("{}: {t} is not a time", keys::CP_CREATED))
                })?,
                None => c.vm_config().creation_filetime.unwrap_or(0),
            };
            let name = c
                .string(keys::CP_NAME)
                .or_else(|| c.string(keys::NAME))
                .unwrap_or_default();
            let cdisks = self.disks(&folder, &c, &substitute)?;
            checkpoints.push(Checkpoint {
                id: cid.clone(),
                name,
                parent,
                created,
                kind,
                has_memory,
                config_path: path,
                runtime_path: runtime,
                disks: cdisks,
                has_tree_keys,
            });
            configs.insert(cid, c);
        }
        checkpoints.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));

        let mut current = config.string(keys::CURRENT).filter(|c| !c.is_empty());
        // A folder Hyper-V wrote: parents (and the current position) from
        // the disk chains, since the keys are not public.
        if checkpoints.iter().any(|c| !c.has_tree_keys) {
            infer_tree(&mut checkpoints, &disks, &mut current);
        }
        let nodes: Vec<Node> = checkpoints
            .iter()
            .map(|c| Node {
                id: c.id.clone(),
                parent: c.parent.clone(),
            })
            .collect();
        if let Err(e) = tree::validate(&nodes) {
            let file = match &e {
                tree::TreeError::MissingParent { id, .. }
                | tree::TreeError::Cycle { id }
                | tree::TreeError::SelfParent { id } => files_of[id].clone(),
            };
            return Err(Error::corrupt(file, e.to_string()));
        }
        if let Some(cur) = &current {
            if !checkpoints.iter().any(|c| &c.id == cur) {
                return Err(Error::corrupt(
                    &config.path,
                    format!(
                        "{} names {cur}, which is not a checkpoint of this VM",
                        keys::CURRENT
                    ),
                ));
            }
        }
        // A down merge cut off after it re-pointed the disks above: those
        // lie on the merge's target already, while the merged disk still
        // reads the same content over it.
        let merged_into: BTreeMap<PathBuf, PathBuf> = cleanup
            .iter()
            .flat_map(|c| c.merges.iter())
            .filter(|m| m.direction == "down")
            .map(|m| (m.child.clone(), m.parent.clone()))
            .collect();
        self.check_disks(&checkpoints, &disks, current.as_deref(), &merged_into)?;
        Ok(VmFolder {
            folder,
            config_path,
            runtime_path,
            snapshot_dir,
            legacy,
            vm,
            disks,
            checkpoints,
            current,
            pending,
            problems: self.problems,
            config,
            checkpoint_configs: configs,
        })
    }

    /// Each checkpoint's disks must lie on top of its parent's (the same
    /// drive's frozen disk is the nearest checkpoint disk in its chain),
    /// the current disks on top of the current checkpoint's, and a root's
    /// on top of no other checkpoint's: otherwise a checkpoint names a disk
    /// that is not part of this VM's tree, or the tree keys contradict the
    /// disks (two roots of one chain, a parent that is not the one below).
    fn check_disks(
        &mut self,
        checkpoints: &[Checkpoint],
        disks: &[Disk],
        current: Option<&str>,
        merged_into: &BTreeMap<PathBuf, PathBuf>,
    ) -> Result<()> {
        let by_id: BTreeMap<&str, &Checkpoint> =
            checkpoints.iter().map(|c| (c.id.as_str(), c)).collect();
        let owner: HashMap<&Path, &str> = checkpoints
            .iter()
            .flat_map(|c| {
                c.disks
                    .iter()
                    .map(move |d| (d.path.as_path(), c.id.as_str()))
            })
            .collect();
        let vm_cfg = PathBuf::from("(the VM configuration)");
        let mut nodes: Vec<(&Path, &[Disk], Option<&Checkpoint>, &str)> = checkpoints
            .iter()
            .map(|c| {
                (
                    c.config_path.as_path(),
                    c.disks.as_slice(),
                    c.parent.as_deref().and_then(|p| by_id.get(p).copied()),
                    c.id.as_str(),
                )
            })
            .collect();
        nodes.push((
            &vm_cfg,
            disks,
            current.and_then(|c| by_id.get(c).copied()),
            "the current state",
        ));
        for (file, ds, parent, who) in nodes {
            for d in ds {
                let below = &d.chain[1..];
                let first_owned = below.iter().find(|p| owner.contains_key(p.as_path()));
                let problem = match parent.and_then(|p| p.disks.iter().find(|x| x.slot == d.slot).map(|pd| (p, pd))) {
                    Some((p, pd)) => {
                        let direct = first_owned == Some(&pd.path);
                        let merging = merged_into.get(&pd.path).is_some_and(|target| {
                            below
                                .iter()
                                .take_while(|x| *x != target)
                                .all(|x| !owner.contains_key(x.as_path()))
                                && below.contains(target)
                        });
                        (!direct && !merging).then(|| {
                            format!(
                                "the disk of {} of {who} is {}, which does not lie directly on top of {} (the disk of checkpoint {} it derives from): it is not this VM's checkpoint disk",
                                d.slot,
                                d.path.display(),
                                pd.path.display(),
                                p.id
                            )
                        })
                    }
                    None if parent.is_none() => first_owned.map(|o| {
                        format!(
                            "{who} has no parent checkpoint, but its disk of {} ({}) lies on top of {}, the disk of checkpoint {}: the tree has two roots where the disks have one",
                            d.slot,
                            d.path.display(),
                            o.display(),
                            owner[o.as_path()]
                        )
                    }),
                    None => None,
                };
                if let Some(why) = problem {
                    self.fail(Error::corrupt(file, why))?;
                }
            }
        }
        Ok(())
    }
}

/// Parents from disk chains: a checkpoint's parent is the checkpoint whose
/// frozen disk is the nearest ancestor of its own frozen disk; the current
/// state derives from the checkpoint whose frozen disk is nearest below
/// the current leaf. Used where the tree keys are missing.
fn infer_tree(checkpoints: &mut [Checkpoint], disks: &[Disk], current: &mut Option<String>) {
    let owner: BTreeMap<PathBuf, String> = checkpoints
        .iter()
        .flat_map(|c| c.disks.iter().map(move |d| (d.path.clone(), c.id.clone())))
        .collect();
    let nearest = |chain: &[PathBuf]| -> Option<String> {
        chain.iter().skip(1).find_map(|p| owner.get(p).cloned())
    };
    for c in checkpoints.iter_mut() {
        if !c.has_tree_keys {
            c.parent = c.disks.first().and_then(|d| nearest(&d.chain));
        }
    }
    if current.is_none() {
        *current = disks
            .first()
            .and_then(|d| d.chain.iter().find_map(|p| owner.get(p).cloned()));
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<id>.vmcx` (or `.xml`) files of the snapshot folder, sorted.
fn snapshot_files(dir: &Path, legacy: bool) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let want = if legacy { "xml" } else { "vmcx" };
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file()
            && p.extension().is_some_and(|e| e.eq_ignore_ascii_case(want))
            && layout::is_id(&file_stem(&p))
        {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Saved when the runtime state file holds memory; a missing file is a
/// VM that is off.
pub fn runtime_state(path: &Path) -> Result<VmState> {
    if !path.is_file() {
        return Ok(VmState::Off);
    }
    let s = vmrs::SavedState::open(path)?;
    Ok(if s.has_memory() {
        VmState::Saved
    } else {
        VmState::Off
    })
}

/// 2012 R2: a saved VM has `<id>/` with a `.bin` (memory) beside its XML.
fn legacy_state(vm_dir: &Path, id: &str) -> VmState {
    if has_legacy_memory(&vm_dir.join(id)) {
        VmState::Saved
    } else {
        VmState::Off
    }
}

fn has_legacy_memory(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("bin"))
        })
    })
}
