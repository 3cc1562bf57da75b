//! Renaming a checkpoint (`Rename-VMSnapshot`): one key of its
//! configuration, written atomically.

use crate::error::{Error, Result};
use crate::files;
use crate::fs::FolderFs;
use crate::keys;
use crate::resume;
use crate::session::Session;
use std::path::Path;

/// Gives the checkpoint `what` (a name or an id) the name `new_name`;
/// returns its id.
pub fn rename(fs: &dyn FolderFs, path: &Path, what: &str, new_name: &str) -> Result<String> {
    let (mut session, f) = Session::begin(path)?;
    let (_, f) = resume::finish(fs, &mut session, f, &mut |_, _| {})?;
    if f.legacy {
        return Err(files::refuse_legacy(&f.config_path));
    }
    if new_name.is_empty() || new_name.chars().count() > 100 || new_name.contains('\0') {
        return Err(Error::refused(
            &f.config_path,
            format!("{new_name:?}: a checkpoint name has 1 to 100 characters and no NUL"),
        ));
    }
    let id = f.find(what)?.id.clone();
    let mut c = f.checkpoint_configs[&id].clone();
    if c.string(keys::CP_ID).is_none() {
        return Err(Error::refused(
            &c.path,
            "this checkpoint was written by Hyper-V: the key of its name is not public, so hvkit does not change it",
        ));
    }
    c.set_string(keys::CP_NAME, new_name);
    let p = c.path.clone();
    c.write(fs, &p)?;
    Ok(id)
}
