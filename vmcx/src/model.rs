//! The VM configuration model on top of a `.vmcx` tree (key catalogue:
//! `shared/research/vmcx-vmrs.md` §5). Reading never changes anything;
//! the setters edit single keys through [`Store::set`], so every key the
//! model does not know stays exactly as it was.
//!
//! Inferred, not documented by Microsoft: the checkpoint type key
//! `global_settings/snapshots/user_type` and its values (2 Disabled,
//! 3 Production, 4 ProductionOnly, 5 Standard, matching WMI's
//! `UserSnapshotType` by name and default value), and `properties/subtype`
//! 0/1 meaning generation 1/2.

use crate::error::{Error, Result};
use crate::store::Store;
use crate::tree::{KeyId, Tree, Value};

/// Hyper-V's checkpoint types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointType {
    Disabled,
    /// Production, falling back to standard when the guest cannot flush.
    Production,
    /// Production; fails instead of falling back.
    ProductionOnly,
    /// Saves memory and device state too.
    Standard,
}

impl CheckpointType {
    pub const KEY: &'static str = "/configuration/global_settings/snapshots/user_type";

    pub fn from_value(v: i64) -> Option<CheckpointType> {
        Some(match v {
            2 => CheckpointType::Disabled,
            3 => CheckpointType::Production,
            4 => CheckpointType::ProductionOnly,
            5 => CheckpointType::Standard,
            _ => return None,
        })
    }
    pub fn value(self) -> i64 {
        match self {
            CheckpointType::Disabled => 2,
            CheckpointType::Production => 3,
            CheckpointType::ProductionOnly => 4,
            CheckpointType::Standard => 5,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CheckpointType::Disabled => "Disabled",
            CheckpointType::Production => "Production",
            CheckpointType::ProductionOnly => "ProductionOnly",
            CheckpointType::Standard => "Standard",
        }
    }
    pub fn parse(s: &str) -> Option<CheckpointType> {
        [
            CheckpointType::Disabled,
            CheckpointType::Production,
            CheckpointType::ProductionOnly,
            CheckpointType::Standard,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Device type GUIDs of disk controllers and network adapters (§5.4).
pub const IDE_CONTROLLER: &str = "83f8638b-8dca-4152-9eda-2ca8b33039b4";
pub const SCSI_CONTROLLER: &str = "d422512d-2bf2-4752-809d-7b82b5fcb1b4";
pub const SYNTHETIC_NIC: &str = "2fc216b0-d2e2-4967-9b6d-b8a5c9ca2778";
pub const GUEST_STATE: &str = "917bd8cb-3bb6-4124-9383-b7d21ac07f79";

/// A drive on a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// "IDE" or "SCSI".
    pub controller_kind: &'static str,
    /// The controller's instance GUID.
    pub controller_instance: String,
    pub controller: u32,
    pub location: u32,
    /// "VHD", "ISO", "VFD", ...
    pub kind: String,
    /// Host path of the image (may be empty, e.g. an empty DVD drive).
    pub path: String,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAdapter {
    pub instance: String,
    pub name: String,
    pub mac: String,
    pub static_mac: bool,
    pub switch: String,
    pub connected: bool,
}

/// Memory settings in MiB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Memory {
    pub startup_mb: Option<i64>,
    pub dynamic: Option<bool>,
    pub minimum_mb: Option<i64>,
    pub maximum_mb: Option<i64>,
    pub buffer_percent: Option<i64>,
}

/// What a `.vmcx` says about its VM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmConfig {
    pub name: Option<String>,
    pub id: Option<String>,
    pub generation: Option<u8>,
    /// Creation time as a Windows FILETIME (100 ns since 1601).
    pub creation_filetime: Option<u64>,
    /// Configuration version, e.g. 2304 = 9.0.
    pub version: Option<i64>,
    pub memory: Memory,
    pub processors: Option<i64>,
    pub checkpoint_type: Option<CheckpointType>,
    /// The raw checkpoint-type value when it is not one of the known four.
    pub checkpoint_type_raw: Option<i64>,
    pub automatic_checkpoints: Option<bool>,
    /// Where checkpoints are kept (`global_settings/snapshots/data_root`).
    pub checkpoint_location: Option<String>,
    /// The VM's data folder (`global_settings/data_root`).
    pub data_root: Option<String>,
    /// The guest state (.vmgs) file.
    pub guest_state_file: Option<String>,
    pub drives: Vec<Drive>,
    pub network_adapters: Vec<NetworkAdapter>,
}

fn int(t: &Tree, p: &str) -> Option<i64> {
    match t.get(p)? {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}
fn string(t: &Tree, p: &str) -> Option<String> {
    match t.get(p)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}
fn boolean(t: &Tree, p: &str) -> Option<bool> {
    match t.get(p)? {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}
fn child_string(t: &Tree, k: KeyId, name: &str) -> String {
    match t.child(k, name).map(|c| &t.key(c).value) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}
fn child_bool(t: &Tree, k: KeyId, name: &str) -> bool {
    matches!(
        t.child(k, name).map(|c| &t.key(c).value),
        Some(Value::Bool(true))
    )
}

/// Trailing decimal number of a name like `controller0` or `drive1`.
fn number_after(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.parse().ok()
}

impl VmConfig {
    /// Reads the model from a VM configuration tree.
    pub fn from_tree(t: &Tree) -> VmConfig {
        let c = "/configuration";
        let mut v = VmConfig {
            name: string(t, &format!("{c}/properties/name")),
            id: string(t, &format!("{c}/properties/global_id")),
            generation: int(t, &format!("{c}/properties/subtype")).and_then(|s| match s {
                0 => Some(1),
                1 => Some(2),
                _ => None,
            }),
            creation_filetime: match t.get(&format!("{c}/properties/creation_time")) {
                Some(Value::Array(b)) if b.len() == 8 => {
                    Some(u64::from_le_bytes(b[..8].try_into().expect("8")))
                }
                _ => None,
            },
            version: int(t, &format!("{c}/properties/version")),
            memory: Memory {
                startup_mb: int(t, &format!("{c}/settings/memory/bank/size")),
                dynamic: boolean(
                    t,
                    &format!("{c}/settings/memory/bank/dynamic_memory_enabled"),
                ),
                minimum_mb: int(t, &format!("{c}/settings/memory/bank/reservation")),
                maximum_mb: int(t, &format!("{c}/settings/memory/bank/limit")),
                buffer_percent: int(t, &format!("{c}/settings/memory/bank/target_memory_buffer")),
            },
            processors: int(t, &format!("{c}/settings/processors/count")),
            checkpoint_type_raw: int(t, CheckpointType::KEY),
            automatic_checkpoints: boolean(
                t,
                &format!("{c}/global_settings/snapshots/enable_automatic"),
            ),
            checkpoint_location: string(t, &format!("{c}/global_settings/snapshots/data_root")),
            data_root: string(t, &format!("{c}/global_settings/data_root")),
            ..VmConfig::default()
        };
        v.checkpoint_type = v.checkpoint_type_raw.and_then(CheckpointType::from_value);
        // Devices through the manifest: vdevNNN/{device, instance}; then
        // device nodes the manifest does not list (2012 R2 manifests leave
        // out the emulated IDE controller), by the IDE controller's GUID or
        // a synthetic controller's ChannelInstanceGuid.
        let top = t.find_all(c).first().copied().unwrap_or(Tree::ROOT);
        let mut devices: Vec<(String, String)> = t
            .find_all(&format!("{c}/manifest"))
            .into_iter()
            .flat_map(|m| t.children(m).to_vec())
            .map(|vdev| {
                (
                    child_string(t, vdev, "device").to_ascii_lowercase(),
                    child_string(t, vdev, "instance").to_ascii_lowercase(),
                )
            })
            .collect();
        for &k in t.children(top) {
            let name = &t.key(k).name;
            let Some(instance) = name.strip_prefix('_').and_then(|n| n.strip_suffix('_')) else {
                continue;
            };
            let instance = instance.to_ascii_lowercase();
            if devices.iter().any(|(_, i)| *i == instance) {
                continue;
            }
            let has_drives = t
                .children(k)
                .iter()
                .any(|&x| number_after(&t.key(x).name, "controller").is_some());
            if instance == IDE_CONTROLLER && has_drives {
                devices.push((IDE_CONTROLLER.into(), instance));
            } else if has_drives && t.child(k, "ChannelInstanceGuid").is_some() {
                devices.push((SCSI_CONTROLLER.into(), instance));
            }
        }
        for (device, instance) in devices {
            let node = t.child(top, &format!("_{instance}_"));
            let Some(node) = node else { continue };
            match device.as_str() {
                IDE_CONTROLLER | SCSI_CONTROLLER => {
                    let kind = if device == IDE_CONTROLLER {
                        "IDE"
                    } else {
                        "SCSI"
                    };
                    for &ctrl in t.children(node) {
                        let Some(cn) = number_after(&t.key(ctrl).name, "controller") else {
                            continue;
                        };
                        for &drive in t.children(ctrl) {
                            let Some(dn) = number_after(&t.key(drive).name, "drive") else {
                                continue;
                            };
                            let dk = child_string(t, drive, "type");
                            if dk.is_empty() || dk == "NONE" {
                                continue;
                            }
                            v.drives.push(Drive {
                                controller_kind: kind,
                                controller_instance: instance.clone(),
                                controller: cn,
                                location: dn,
                                kind: dk,
                                path: child_string(t, drive, "pathname"),
                            });
                        }
                    }
                }
                SYNTHETIC_NIC => v.network_adapters.push(NetworkAdapter {
                    instance: instance.clone(),
                    name: child_string(t, node, "FriendlyName"),
                    mac: child_string(t, node, "MacAddress"),
                    static_mac: child_bool(t, node, "MacAddressIsStatic"),
                    switch: child_string(t, node, "SwitchName"),
                    connected: child_bool(t, node, "IsConnected"),
                }),
                GUEST_STATE => {
                    let p = child_string(t, node, "StateFilePath");
                    if !p.is_empty() {
                        v.guest_state_file = Some(p);
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// True when the tree looks like a VM configuration at all.
    pub fn is_vm(t: &Tree) -> bool {
        t.get("/configuration/properties/name").is_some()
            || t.get("/configuration/properties/global_id").is_some()
    }
}

/// A FILETIME (100 ns ticks since 1601-01-01 UTC) as its UTC calendar
/// date and time: (year, month, day, hour, minute, second).
pub fn filetime_civil(ft: u64) -> (i64, i64, i64, i64, i64, i64) {
    let secs = (ft / 10_000_000) as i64 - 11_644_473_600;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// Creation time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn filetime_to_string(ft: u64) -> String {
    let (y, m, d, h, mi, s) = filetime_civil(ft);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// Config version as `major.minor`.
pub fn version_string(v: i64) -> String {
    format!("{}.{}", v >> 8, v & 0xff)
}

impl Store {
    /// The VM model of this file.
    pub fn vm_config(&self) -> VmConfig {
        VmConfig::from_tree(self.tree())
    }

    /// Sets the checkpoint type (one key; nothing else changes).
    pub fn set_checkpoint_type(&mut self, t: CheckpointType) -> Result<()> {
        self.set(CheckpointType::KEY, Value::Int(t.value()))
    }

    /// Renames the VM.
    pub fn set_vm_name(&mut self, name: &str) -> Result<()> {
        self.set(
            "/configuration/properties/name",
            Value::String(name.to_string()),
        )
    }

    /// Sets the startup memory in MiB.
    pub fn set_memory_mb(&mut self, mb: i64) -> Result<()> {
        if mb <= 0 {
            return Err(Error::Invalid(format!("memory of {mb} MiB")));
        }
        self.set("/configuration/settings/memory/bank/size", Value::Int(mb))
    }

    /// Sets the number of virtual processors.
    pub fn set_processor_count(&mut self, n: i64) -> Result<()> {
        if n <= 0 {
            return Err(Error::Invalid(format!("{n} processors")));
        }
        self.set("/configuration/settings/processors/count", Value::Int(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime() {
        // 2021-08-22 21:41:00 UTC, the creation time of the corpus VM.
        let ft = (1_629_668_460u64 + 11_644_473_600) * 10_000_000;
        assert_eq!(filetime_to_string(ft), "2021-08-22 21:41:00 UTC");
        assert_eq!(version_string(2304), "9.0");
        assert_eq!(
            CheckpointType::parse("standard"),
            Some(CheckpointType::Standard)
        );
        assert_eq!(
            CheckpointType::from_value(3),
            Some(CheckpointType::Production)
        );
    }
}
