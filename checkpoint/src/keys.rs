//! Every configuration key this crate reads or writes, in one place (the
//! README's "Keys" table lists them with their meaning).
//!
//! Hyper-V's own keys are used where public material pins them down
//! (`research/checkpoint.md` §5): the VM's identity, name, generation,
//! memory, processors, checkpoint type, data roots and drive paths. The
//! keys that say how checkpoints form a tree are not public, so ours live
//! under one node of our own, [`HVKIT`]; Hyper-V and other readers see
//! them as unknown keys of a configuration they otherwise understand.

/// VM name (`Msvm_VirtualSystemSettingData.ElementName`).
pub const NAME: &str = "/configuration/properties/name";
/// VM id, the `<VMID>` of `<VMID>.vmcx`.
pub const GLOBAL_ID: &str = "/configuration/properties/global_id";
/// Equals the VM id in every sample.
pub const LOGICAL_ID: &str = "/configuration/settings/global/logical_id";
/// `Virtual Machines` in VM configurations.
pub const TYPE_ID: &str = "/configuration/properties/type_id";
/// 0 generation 1, 1 generation 2.
pub const SUBTYPE: &str = "/configuration/properties/subtype";
/// Configuration version, `(major << 8) | minor`.
pub const VERSION: &str = "/configuration/properties/version";
/// 8-byte FILETIME.
pub const CREATION_TIME: &str = "/configuration/properties/creation_time";
/// Startup memory in MiB.
pub const MEMORY_MB: &str = "/configuration/settings/memory/bank/size";
pub const PROCESSORS: &str = "/configuration/settings/processors/count";
/// `UserSnapshotType`: 2 Disabled, 3 Production, 4 ProductionOnly, 5 Standard.
pub const CHECKPOINT_TYPE: &str = vmcx::CheckpointType::KEY;
/// Folder under which `Snapshots/` holds the checkpoint files.
pub const SNAPSHOT_DATA_ROOT: &str = "/configuration/global_settings/snapshots/data_root";
/// The VM's data folder.
pub const DATA_ROOT: &str = "/configuration/global_settings/data_root";
/// The guest state file (`<VMID>.vmgs`), under the Guest Runtime State device.
pub const GUEST_STATE_FILE: &str =
    "/configuration/_917bd8cb-3bb6-4124-9383-b7d21ac07f79_/StateFilePath";
/// In a drive node: `VHD`, `ISO`, `VFD`, `NONE`.
pub const DRIVE_TYPE: &str = "type";
/// In a drive node: the image's host path.
pub const DRIVE_PATH: &str = "pathname";

/// Our node.
pub const HVKIT: &str = "/configuration/hvkit";
/// Int: the version of our keys (1).
pub const HVKIT_VERSION: &str = "/configuration/hvkit/version";
/// VM configuration, String: the id of the checkpoint the current state
/// derives from (`Msvm_VirtualSystemSettingData.Parent` of the VM's
/// settings); absent or empty when there is none.
pub const CURRENT: &str = "/configuration/hvkit/current_checkpoint";
/// VM configuration, String: the operation under way, as JSON (see
/// `journal.rs`); absent when none is.
pub const PENDING: &str = "/configuration/hvkit/pending_operation";
/// VM configuration, String: JSON list of the disk files kept as layers
/// of their own after the checkpoints that froze them were deleted (they
/// had several children then); a later delete merges them when they are
/// down to one. Absent when there are none.
pub const KEPT_LAYERS: &str = "/configuration/hvkit/kept_layers";
/// Checkpoint configurations: the node of the checkpoint's own keys.
pub const CHECKPOINT: &str = "/configuration/hvkit/checkpoint";
/// String: the checkpoint's id (`<CheckpointID>.vmcx`).
pub const CP_ID: &str = "/configuration/hvkit/checkpoint/id";
/// String: the id of the VM it belongs to
/// (`VirtualSystemIdentifier`).
pub const CP_VM_ID: &str = "/configuration/hvkit/checkpoint/vm_id";
/// String: the checkpoint's name (`ElementName`).
pub const CP_NAME: &str = "/configuration/hvkit/checkpoint/name";
/// String: the parent checkpoint's id (`Parent`), empty at a root.
pub const CP_PARENT: &str = "/configuration/hvkit/checkpoint/parent";
/// Int: when it was taken, FILETIME ticks (`CreationTime`).
pub const CP_CREATED: &str = "/configuration/hvkit/checkpoint/created";
/// String: `standard` or `production`, what it became.
pub const CP_KIND: &str = "/configuration/hvkit/checkpoint/kind";

/// Runtime state (`.vmrs`) of a VM that is off: the configuration version.
pub const RUNTIME_VERSION: &str = "/configuration/properties/version";

/// The version of our keys written.
pub const OUR_VERSION: i64 = 1;
