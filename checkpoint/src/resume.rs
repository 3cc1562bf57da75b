//! Completing an operation a crash cut off: every operation calls this
//! first, so running the same command again (or any other) finishes the
//! one under way before anything new starts.

use crate::error::Result;
use crate::folder::VmFolder;
use crate::fs::FolderFs;
use crate::journal::Pending;
use crate::{apply, cleanup, create};
use std::path::Path;

/// Finishes the pending operation of the VM at `config` (forward, or back
/// for a running VM's cut-off checkpoint) and returns what it was.
pub fn finish(
    fs: &dyn FolderFs,
    config: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Option<Pending>> {
    let f = VmFolder::open(config)?;
    let Some(p) = f.pending.clone() else {
        return Ok(None);
    };
    match &p {
        Pending::Create { checkpoint, leaves } => create::resume(fs, &f, checkpoint, leaves)?,
        Pending::Apply {
            target,
            leaves,
            save_current,
            runtime,
        } => apply::finish(fs, &f, target, leaves, save_current.as_ref(), runtime)?,
        Pending::Cleanup(_) => {
            cleanup::run(fs, config, progress)?;
        }
    }
    Ok(Some(p))
}
