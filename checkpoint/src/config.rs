//! A configuration (`.vmcx`, or 2012 R2 `.xml`) held in memory as a key
//! tree, with the few accessors and edits the folder model needs. Every
//! key it does not know is kept exactly as read and written back.

use crate::error::{Error, Result};
use crate::fs::{write_atomically_unsynced, FolderFs};
use crate::keys;
use std::path::{Path, PathBuf};
use vmcx::{Tree, Value};

/// Largest configuration read into memory (real ones are under 100 KiB).
pub const MAX_CONFIG: u64 = 64 << 20;

/// A drive's place: which controller (by instance), which channel, which
/// location. The same slot in the VM and in a checkpoint is the same disk.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Slot {
    /// `IDE` or `SCSI`.
    pub kind: String,
    /// The controller's instance GUID, lower case.
    pub instance: String,
    pub controller: u32,
    pub location: u32,
}

impl Slot {
    /// The drive's node, `/configuration/_<instance>_/controllerN/driveM`.
    pub fn node(&self) -> String {
        format!(
            "/configuration/_{}_/controller{}/drive{}",
            self.instance, self.controller, self.location
        )
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.kind, self.controller, self.location)
    }
}

/// A virtual hard disk drive of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDrive {
    pub slot: Slot,
    /// The `pathname` as written.
    pub pathname: String,
}

/// A configuration file's keys.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (or will be written to).
    pub path: PathBuf,
    pub tree: Tree,
}

impl Config {
    /// Reads a `.vmcx` (replaying a pending replay log in memory) or a
    /// 2012 R2 `.xml` configuration.
    pub fn read(path: &Path) -> Result<Config> {
        Config::parse(path, &read_bytes(path)?)
    }

    /// A configuration from the bytes of the file at `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config> {
        let tree = if is_xml(path) {
            crate::xml::parse(path, bytes)?
        } else {
            let storage = std::sync::Arc::new(vmcx::MemStorage::new(bytes.to_vec()));
            vmcx::Store::from_storage(
                storage,
                &path.display().to_string(),
                vmcx::OpenOptions::default(),
            )?
            .resolved_tree()?
        };
        Ok(Config {
            path: path.to_path_buf(),
            tree,
        })
    }

    pub fn string(&self, key: &str) -> Option<String> {
        match self.tree.get(key)? {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// A String key that must be there.
    pub fn required_string(&self, key: &str) -> Result<String> {
        self.string(key)
            .ok_or_else(|| Error::corrupt(&self.path, format!("{key} is missing or not a string")))
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.tree.get(key)? {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.tree.set(key, value);
    }

    pub fn set_string(&mut self, key: &str, value: &str) {
        self.tree.set(key, Value::String(value.to_string()));
    }

    pub fn remove(&mut self, key: &str) {
        self.tree.remove(key);
    }

    /// The VM model of the vmcx crate over these keys.
    pub fn vm_config(&self) -> vmcx::VmConfig {
        vmcx::VmConfig::from_tree(&self.tree)
    }

    /// Every virtual hard disk drive (type `VHD` with a path), in
    /// manifest order.
    pub fn disk_drives(&self) -> Vec<DiskDrive> {
        self.vm_config()
            .drives
            .into_iter()
            .filter(|d| d.kind.eq_ignore_ascii_case("VHD") && !d.path.is_empty())
            .map(|d| DiskDrive {
                slot: Slot {
                    kind: d.controller_kind.to_string(),
                    instance: d.controller_instance,
                    controller: d.controller,
                    location: d.location,
                },
                pathname: d.path,
            })
            .collect()
    }

    /// Points the drive in `slot` at `path`.
    pub fn set_drive_path(&mut self, slot: &Slot, path: &Path) {
        self.tree.set(
            &format!("{}/{}", slot.node(), keys::DRIVE_PATH),
            Value::String(path.display().to_string()),
        );
    }

    /// Writes the keys as a new `.vmcx` at `path`, atomically.
    pub fn write(&self, fs: &dyn FolderFs, path: &Path) -> Result<()> {
        self.write_unsynced(fs, path)?;
        crate::fs::sync_dirs(fs, &[path])
    }

    /// [`Config::write`], leaving the folder sync to the caller
    /// ([`crate::fs::write_atomically_unsynced`]).
    pub fn write_unsynced(&self, fs: &dyn FolderFs, path: &Path) -> Result<()> {
        if is_xml(path) {
            return Err(Error::refused(
                path,
                "2012 R2 XML configurations are read-only in hvkit",
            ));
        }
        write_atomically_unsynced(fs, path, |storage, name| {
            vmcx::writer::write(storage, name, &self.tree, &|_| {
                Err(vmcx::Error::Invalid("unresolved file object".into()))
            })?;
            Ok(())
        })
    }
}

/// The bytes of a configuration file, refusing sizes no configuration has
/// before reading them.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let max = if is_xml(path) {
        crate::xml::MAX_XML
    } else {
        MAX_CONFIG
    };
    if len > max {
        return Err(Error::corrupt(
            path,
            format!("{len} bytes is too large for a configuration"),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// True for a `.xml` file name.
pub fn is_xml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xml"))
}
