//! What a VM folder holds, as [`crate::VmFolder::open`] reads it.

use crate::config::Slot;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vmcx::CheckpointType;

/// What a checkpoint became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Saved memory and device state (when the VM had any) and the disks.
    Standard,
    /// The disks only, taken consistent (the guest flushed first, or the VM
    /// was off); applying it boots the guest cold.
    Production,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Standard => "standard",
            Kind::Production => "production",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "standard" => Some(Kind::Standard),
            "production" => Some(Kind::Production),
            _ => None,
        }
    }
}

/// The VM's power state as its files tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// No saved state: the VM boots cold.
    Off,
    /// The runtime state file holds saved memory: the VM resumes from it.
    Saved,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Off => "off",
            VmState::Saved => "saved",
        }
    }
}

/// The VM's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub generation: Option<u8>,
    pub memory_mb: Option<i64>,
    pub processors: Option<i64>,
    /// `None` when the key is missing or holds an unknown value (see
    /// `checkpoint_type_raw`).
    pub checkpoint_type: Option<CheckpointType>,
    pub checkpoint_type_raw: Option<i64>,
    /// Configuration version, `(major << 8) | minor`.
    pub version: Option<i64>,
    /// The folder whose `Snapshots/` holds the checkpoint files.
    pub checkpoint_location: PathBuf,
    pub state: VmState,
}

/// A virtual hard disk of the VM or of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub slot: Slot,
    /// The `pathname` as the configuration writes it.
    pub pathname: String,
    /// The file (canonical, absolute): the current leaf, or the
    /// checkpoint's frozen disk.
    pub path: PathBuf,
    /// Its chain, `path` first, the base last.
    pub chain: Vec<PathBuf>,
    pub virtual_size: u64,
}

/// One checkpoint of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    /// When it was taken, FILETIME ticks.
    pub created: u64,
    pub kind: Kind,
    /// Its `.vmrs` holds saved memory (a standard checkpoint of a VM that
    /// was running or saved).
    pub has_memory: bool,
    pub config_path: PathBuf,
    pub runtime_path: PathBuf,
    /// The frozen disk of each attached disk.
    pub disks: Vec<Disk>,
    /// False when the tree keys came from disk chains (a folder Hyper-V
    /// wrote, whose parent key is not public): parent and kind inferred.
    pub has_tree_keys: bool,
}
