//! Where the test corpus is: `$HVKIT_CORPUS`, else `../../shared/corpus`
//! from the calling crate's folder. For this workspace's tests (public so
//! every crate's tests share it; the caller prints the skip reason).

use std::path::{Path, PathBuf};

/// `corpus/SUB` for a test crate whose manifest folder is `manifest_dir`
/// (pass `env!("CARGO_MANIFEST_DIR")`), or the reason to skip when it is
/// absent.
pub fn corpus_subdir(manifest_dir: &str, sub: &str) -> Result<PathBuf, String> {
    let dir = std::env::var_os("HVKIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(manifest_dir).join("../../shared/corpus"))
        .join(sub);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "SKIP: corpus not found at {} (set HVKIT_CORPUS)",
            dir.display()
        ))
    }
}
