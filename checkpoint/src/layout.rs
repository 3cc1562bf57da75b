//! Where Hyper-V keeps a VM's files and how it names them
//! (`research/checkpoint.md` §1.1, §2.1, §3.4, §3.5):
//!
//! ```text
//! <folder>/Virtual Machines/<VMID>.vmcx   configuration
//! <folder>/Virtual Machines/<VMID>.vmrs   runtime state (saved memory when saved)
//! <folder>/Virtual Machines/<VMID>.vmgs   guest state (left untouched)
//! <folder>/Snapshots/<CheckpointID>.vmcx  a checkpoint's configuration
//! <folder>/Snapshots/<CheckpointID>.vmrs  its runtime state (memory of a standard one)
//! <folder>/Virtual Hard Disks/<disk>.vhdx, <disk>_<GUID>.avhdx
//! ```
//!
//! 2012 R2: `Virtual Machines/<VMID>.xml`, `Snapshots/<CheckpointID>.xml`
//! and `Snapshots/<CheckpointID>/` with the `.bin` (memory) and `.vsv`
//! (device state) of a running checkpoint.

use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const VM_DIR: &str = "Virtual Machines";
pub const SNAPSHOT_DIR: &str = "Snapshots";
pub const DISK_DIR: &str = "Virtual Hard Disks";

/// A new VM or checkpoint id, upper case as Hyper-V writes them.
pub fn new_id() -> String {
    Uuid::new_v4().to_string().to_ascii_uppercase()
}

/// True for a GUID in the form Hyper-V uses for ids (either case).
pub fn is_id(s: &str) -> bool {
    s.len() == 36 && Uuid::parse_str(s).is_ok()
}

pub fn config_path(folder: &Path, vm_id: &str) -> PathBuf {
    folder.join(VM_DIR).join(format!("{vm_id}.vmcx"))
}

pub fn runtime_path(config: &Path) -> PathBuf {
    config.with_extension("vmrs")
}

pub fn checkpoint_config(snapshot_dir: &Path, id: &str) -> PathBuf {
    snapshot_dir.join(format!("{id}.vmcx"))
}

/// The name of a new differencing disk for a disk whose chain ends in the
/// base file `root`: `<root's name>_<GUID>.avhdx` with an upper-case GUID,
/// whatever the depth, as Hyper-V names them.
pub fn avhdx_name(root: &Path, id: Uuid) -> String {
    let stem = root
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    format!("{stem}_{}.avhdx", id.to_string().to_ascii_uppercase())
}

/// The file name at the end of a Windows or Linux path.
pub fn file_name_of(pathname: &str) -> &str {
    pathname.rsplit(['\\', '/']).next().unwrap_or(pathname)
}

/// Where the image a drive names is on this machine. A drive's
/// `pathname` is the host path where the configuration was written: an
/// absolute Linux path for folders hvkit wrote, `C:\...` for Hyper-V's.
/// As dissect.target does, the file name is looked for first where the
/// folder keeps its disks: in the folder's `Virtual Hard Disks/`, beside
/// the configuration, in `../Virtual Hard Disks/` from the configuration's
/// folder, and in the VM folder itself; then the path as written (an
/// absolute path outside the folder). So a copied or moved folder uses its
/// own files, never the original's.
pub fn resolve_disk(pathname: &str, folder: &Path, config: &Path) -> Option<PathBuf> {
    resolve_disk_with(pathname, folder, config, &|p| p.to_path_buf())
}

/// [`resolve_disk`], where `substitute` maps a candidate that is gone to
/// the file holding its content now (a disk merged down into its parent
/// during a cleanup); it is tried before the path as written.
pub fn resolve_disk_with(
    pathname: &str,
    folder: &Path,
    config: &Path,
    substitute: &dyn Fn(&Path) -> PathBuf,
) -> Option<PathBuf> {
    if pathname.is_empty() {
        return None;
    }
    let name = file_name_of(pathname);
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    let config_dir = config.parent().unwrap_or(Path::new("."));
    let p = Path::new(pathname);
    let local: Vec<PathBuf> = [
        folder.join(DISK_DIR),
        config_dir.to_path_buf(),
        config_dir.join("..").join(DISK_DIR),
        folder.to_path_buf(),
    ]
    .into_iter()
    .map(|d| d.join(name))
    .collect();
    if let Some(c) = local.iter().find(|c| c.is_file()) {
        return Some(c.clone());
    }
    let as_written = p.is_absolute().then(|| p.to_path_buf());
    for c in local.iter().chain(as_written.iter()) {
        let s = substitute(c);
        if &s != c && s.is_file() {
            return Some(s);
        }
    }
    as_written.filter(|p| p.is_file())
}

/// Hyper-V's default checkpoint name: `<VM name> - (M/D/YYYY - h:mm:ss AM)`
/// at `filetime` (UTC).
pub fn default_checkpoint_name(vm_name: &str, filetime: u64) -> String {
    let (y, m, d, h, mi, s) = vmcx::model::filetime_civil(filetime);
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    format!("{vm_name} - ({m}/{d}/{y} - {h12}:{mi:02}:{s:02} {ampm})")
}

/// Now, as FILETIME ticks (100 ns since 1601-01-01 UTC).
pub fn now_filetime() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() + 11_644_473_600) * 10_000_000 + u64::from(d.subsec_nanos() / 100)
}

/// FILETIME ticks as RFC 3339 UTC (`2026-12-07T23:45:58Z`).
pub fn filetime_rfc3339(ft: u64) -> String {
    let (y, m, d, h, mi, s) = vmcx::model::filetime_civil(ft);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let id = Uuid::parse_str("6f2a1b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            avhdx_name(Path::new("/x/Virtual Hard Disks/web.vhdx"), id),
            "web_6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A5B.avhdx"
        );
        assert_eq!(file_name_of(r"C:\Disks\a b.vhdx"), "a b.vhdx");
        assert_eq!(file_name_of("/x/y.vhdx"), "y.vhdx");
        // 2021-08-22 21:41:00 UTC
        let ft = (1_629_668_460u64 + 11_644_473_600) * 10_000_000;
        assert_eq!(
            default_checkpoint_name("VM", ft),
            "VM - (8/22/2021 - 9:41:00 PM)"
        );
        assert_eq!(filetime_rfc3339(ft), "2021-08-22T21:41:00Z");
        let midnight = (1_629_590_400u64 + 11_644_473_600) * 10_000_000;
        assert_eq!(
            default_checkpoint_name("VM", midnight),
            "VM - (8/22/2021 - 12:00:00 AM)"
        );
        assert!(is_id(&new_id()));
        assert!(new_id().chars().all(|c| !c.is_ascii_lowercase()));
    }
}
