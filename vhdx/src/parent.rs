//! Finding a differencing disk's parent from its locator (MS-VHDX 2.6.2.6.1)
//! on a local filesystem, and checking the parent's identity.

use crate::format::locator::ParentLocator;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Candidate parent paths, in the order they are tried: `relative_path`
/// resolved against the child's folder; then `volume_path` and
/// `absolute_win32_path`, which name Windows volumes, mapped onto the
/// child's folder by file name.
pub fn candidates(child: &Path, locator: &ParentLocator) -> Vec<(&'static str, PathBuf)> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut out: Vec<(&'static str, PathBuf)> = Vec::new();
    if let Some(rel) = locator.get("relative_path") {
        out.push(("relative_path", join_windows_relative(dir, rel)));
    }
    for key in ["volume_path", "absolute_win32_path"] {
        if let Some(name) = locator.get(key).and_then(windows_file_name) {
            let p = dir.join(name);
            if !out.iter().any(|(_, q)| q == &p) {
                out.push((key, p));
            }
        }
    }
    out
}

/// Last component of a Windows path (`\` or `/` separated).
pub fn windows_file_name(p: &str) -> Option<&str> {
    p.rsplit(['\\', '/'])
        .next()
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
}

/// Joins a Windows relative path (`..\x\parent.vhdx`, `.\parent.vhdx`) to `dir`.
pub fn join_windows_relative(dir: &Path, rel: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    for part in rel.split(['\\', '/']) {
        match part {
            "" | "." => {}
            ".." => p.push(".."),
            s => p.push(s),
        }
    }
    p
}

/// The parent identities a locator accepts: `parent_linkage` and, when
/// present, `parent_linkage2` (braced GUID strings, any case).
pub fn linkages(locator: &ParentLocator) -> Vec<Uuid> {
    ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| locator.get(k))
        .filter_map(|v| Uuid::parse_str(v.trim()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::guids::LOCATOR_TYPE_VHDX;

    fn loc(pairs: &[(&str, &str)]) -> ParentLocator {
        ParentLocator {
            locator_type: LOCATOR_TYPE_VHDX,
            entries: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn windows_paths_map_to_the_childs_folder() {
        let l = loc(&[
            ("parent_linkage", "{83ED0EC3-24C8-49A6-A959-5E4BF1288BFB}"),
            ("relative_path", "..\\base\\parent.vhdx"),
            (
                "volume_path",
                "\\\\?\\Volume{1b2d1ee6-0000-0000-0000-100000000000}\\VMs\\parent.vhdx",
            ),
            ("absolute_win32_path", "\\\\?\\C:\\VMs\\other.vhdx"),
        ]);
        let c = candidates(Path::new("/vm/disks/child.avhdx"), &l);
        assert_eq!(
            c[0],
            (
                "relative_path",
                PathBuf::from("/vm/disks/../base/parent.vhdx")
            )
        );
        assert_eq!(
            c[1],
            ("volume_path", PathBuf::from("/vm/disks/parent.vhdx"))
        );
        assert_eq!(
            c[2],
            ("absolute_win32_path", PathBuf::from("/vm/disks/other.vhdx"))
        );
        assert_eq!(
            linkages(&l),
            vec![Uuid::parse_str("83ed0ec3-24c8-49a6-a959-5e4bf1288bfb").unwrap()]
        );
    }
}
