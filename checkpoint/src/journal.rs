//! The operation under way, recorded in the VM's configuration under
//! `/configuration/hvkit/pending_operation` (a JSON string) before any
//! file changes, so that a process killed at any instant leaves a folder
//! that reads as before or as after, and running the same command again
//! completes it.
//!
//! Two phases:
//! - a *prepared* create or apply: new files are being made beside the
//!   old ones; the VM's configuration still names the old ones, and the
//!   checkpoint being made is hidden, so the folder reads **as before**;
//! - a *cleanup*: the VM's configuration already holds the new state (the
//!   commit); what remains is file work (merging or removing disks no
//!   longer needed as layers, re-pointing configurations, removing the
//!   files of deleted checkpoints), and the reader applies the recorded
//!   tree change to what the files say, so the folder reads **as after**.

use crate::config::Slot;
use crate::model::Kind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A checkpoint being made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCheckpoint {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub kind: Kind,
    /// The checkpoint the state it saves derives from.
    pub parent: Option<String>,
    /// A running VM's checkpoint (a cut-off one is rolled back, not
    /// forward: the memory it would save is gone).
    #[serde(default)]
    pub live: bool,
}

/// A new differencing disk for one drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLeaf {
    pub slot: Slot,
    pub parent: PathBuf,
    pub leaf: PathBuf,
}

/// A merge decided during a cleanup (recorded before it starts, so that a
/// re-run continues it in the same direction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The disk above.
    pub child: PathBuf,
    /// The layer no longer needed on its own.
    pub parent: PathBuf,
    /// `down` (the child's data into the parent; the child goes) or `up`
    /// (the parent's data into the child; the parent goes).
    pub direction: String,
}

/// The committed part of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cleanup {
    /// The command that committed (`apply`, `delete`, `delete_subtree`),
    /// with its checkpoint.
    pub command: String,
    pub target: Option<String>,
    /// The target checkpoint's name (to recognize the same command).
    #[serde(default)]
    pub target_name: Option<String>,
    /// Checkpoints no longer in the tree.
    pub removed: Vec<String>,
    /// Checkpoints whose parent changed, with the new parent.
    pub reparent: Vec<(String, Option<String>)>,
    /// Disk files that may no longer be needed as layers of their own.
    pub candidates: Vec<PathBuf>,
    pub merges: Vec<MergeRecord>,
    /// (old, new): a disk merged down into its parent; a configuration
    /// naming `old` means `new` once `old` is gone.
    pub replaced: Vec<(PathBuf, PathBuf)>,
    /// Files to remove (deleted checkpoints' configurations and states).
    pub remove_files: Vec<PathBuf>,
    /// (from, to): a file to rename into place; until it is, `to` is read
    /// from `from`.
    pub moves: Vec<(PathBuf, PathBuf)>,
}

/// The pending operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Pending {
    /// Taking a checkpoint (prepared).
    Create {
        checkpoint: NewCheckpoint,
        leaves: Vec<NewLeaf>,
    },
    /// Applying a checkpoint (prepared); `save_current` first saves the
    /// current state as a new checkpoint ("Take checkpoint and apply").
    Apply {
        target: String,
        leaves: Vec<NewLeaf>,
        save_current: Option<NewCheckpoint>,
        /// The runtime state the VM gets, written here first.
        runtime: PathBuf,
    },
    /// Committed; file work remains.
    Cleanup(Cleanup),
}

impl Pending {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
    pub fn from_json(s: &str) -> Result<Pending, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    /// Checkpoints that exist as files but are not in the tree yet.
    pub fn hidden(&self) -> Vec<&str> {
        match self {
            Pending::Create { checkpoint, .. } => vec![checkpoint.id.as_str()],
            Pending::Apply { save_current, .. } => {
                save_current.iter().map(|c| c.id.as_str()).collect()
            }
            Pending::Cleanup(c) => c.removed.iter().map(String::as_str).collect(),
        }
    }

    /// One line for messages: what was under way.
    pub fn describe(&self) -> String {
        match self {
            Pending::Create { checkpoint, .. } => {
                format!(
                    "taking checkpoint {:?} ({})",
                    checkpoint.name, checkpoint.id
                )
            }
            Pending::Apply {
                target,
                save_current,
                ..
            } => format!(
                "applying checkpoint {target}{}",
                if save_current.is_some() {
                    " after saving the current state"
                } else {
                    ""
                }
            ),
            Pending::Cleanup(c) => format!(
                "{}{} (committed; finishing its file work)",
                c.command.replace('_', " "),
                c.target
                    .as_deref()
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default()
            ),
        }
    }
}

impl Cleanup {
    /// A disk path as the finished operation names it: `p`, or the layer
    /// it was merged down into once it is gone.
    pub fn substitute(&self, p: &Path) -> PathBuf {
        if self.replaced.is_empty() || p.exists() {
            return p.to_path_buf();
        }
        let canon = p
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .zip(p.file_name())
            .map(|(d, n)| d.join(n));
        let mut cur = canon.unwrap_or_else(|| p.to_path_buf());
        for _ in 0..=self.replaced.len() {
            if cur.exists() {
                break;
            }
            match self.replaced.iter().find(|(old, _)| old == &cur) {
                Some((_, new)) => cur = new.clone(),
                None => break,
            }
        }
        cur
    }

    /// Where `to` is read from until its move is done.
    pub fn source_of(&self, to: &Path) -> PathBuf {
        self.moves
            .iter()
            .find(|(from, t)| t == to && from.exists())
            .map(|(from, _)| from.clone())
            .unwrap_or_else(|| to.to_path_buf())
    }

    /// The parent a checkpoint has once the operation is finished.
    pub fn parent_override(&self, id: &str) -> Option<Option<String>> {
        self.reparent
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, p)| p.clone())
    }
}
