//! Completing an operation a crash cut off: every operation calls this
//! first, so running the same command again (or any other) finishes the
//! one under way before anything new starts.

use crate::error::Result;
use crate::folder::VmFolder;
use crate::fs::FolderFs;
use crate::journal::Pending;
use crate::session::Session;
use crate::{apply, cleanup, create};
use std::path::Path;

/// Finishes the pending operation of the VM `f` (read by `session`):
/// forward, or back for a running VM's cut-off checkpoint; returns what it
/// was and the folder afterwards. Temporaries of cut-off writes go too.
pub(crate) fn finish(
    fs: &dyn FolderFs,
    session: &mut Session,
    f: VmFolder,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Option<Pending>, VmFolder)> {
    let Some(p) = f.pending.clone() else {
        sweep_temporaries(fs, &f)?;
        return Ok((None, f));
    };
    match &p {
        Pending::Create { checkpoint, leaves } => create::resume(fs, &f, checkpoint, leaves)?,
        Pending::Apply {
            target,
            leaves,
            save_current,
            runtime,
        } => {
            apply::finish(
                fs,
                session,
                &f,
                target,
                leaves,
                save_current.as_ref(),
                runtime,
            )?;
        }
        Pending::Cleanup(_) => {
            cleanup::run(fs, session, progress)?;
        }
    }
    let after = session.open()?;
    sweep_temporaries(fs, &after)?;
    Ok((Some(p), after))
}

/// Removes what cut-off atomic writes left: `.NAME.hvkit-tmp` files in the
/// folders this VM writes, and `.NAME.hvkit-new` runtime states no pending
/// operation names. Called with the VM's lock held and no operation under
/// way, when nothing can need them.
fn sweep_temporaries(fs: &dyn FolderFs, f: &VmFolder) -> Result<()> {
    if f.pending.is_some() {
        return Ok(());
    }
    let mut dirs: Vec<std::path::PathBuf> = vec![
        f.config_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        f.snapshot_dir.clone(),
    ];
    for p in f.all_disk_files() {
        if let Some(d) = p.parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && (name.ends_with(".hvkit-tmp") || name.ends_with(".hvkit-new"))
                && e.path().is_file()
            {
                crate::fs::remove_if_exists(fs, &e.path())?;
            }
        }
    }
    Ok(())
}
