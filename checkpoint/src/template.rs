//! The configuration of a new VM, laid out as Hyper-V lays out a VM's
//! `.vmcx` (the key catalogue of `shared/research/vmcx-vmrs.md` §5 and the
//! corpus files): `properties`, `settings`, `global_settings`, the
//! `manifest` of virtual devices, one node per device instance, and the
//! disk controllers with their drives. Generation 1: an IDE controller
//! (two channels, two drives each), then SCSI for more disks; generation
//! 2: a synthetic SCSI controller. No data root or checkpoint location is
//! written (Hyper-V's samples have none either): the checkpoint files go to
//! the folder's own `Snapshots/`, so a copied folder keeps working.

use crate::keys;
use std::path::Path;
use uuid::Uuid;
use vmcx::model::{IDE_CONTROLLER, SCSI_CONTROLLER};
use vmcx::{CheckpointType, Tree, Value};

/// The configuration version written: 10.0 (Windows Server 2022).
pub const VERSION: i64 = 0x0A00;

/// What the new VM is.
pub struct Template<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub generation: u8,
    pub memory_mb: i64,
    pub processors: i64,
    pub checkpoint_type: CheckpointType,
    /// Creation time, FILETIME ticks.
    pub created: u64,
    /// The disks, in drive order.
    pub disks: &'a [std::path::PathBuf],
}

/// Singleton devices of every VM: (type GUID, name, VDEVVersion).
const COMMON: &[(&str, &str, i64)] = &[
    (
        "d41a1872-3740-41ce-a1ee-4522ab82f991",
        "Microsoft VmBus",
        771,
    ),
    (
        "72682fc4-040a-430a-be0b-224574b953fe",
        "Microsoft Emulated IoAPIC",
        256,
    ),
    (
        "db8b9818-b4bb-4725-b99d-b4612716b6b4",
        "Microsoft Emulated Power Management Device",
        256,
    ),
    (
        "ac6b8dc1-3257-4a70-b1b2-a9c9215659ad",
        "Microsoft Virtual BIOS",
        2048,
    ),
    (
        "e51b7ef6-4a7f-4780-aaae-d4b291aacd2e",
        "Microsoft Emulated Real Time Clock",
        512,
    ),
    (
        "de6cdc86-e1fb-4940-801b-c3c1a26c4da4",
        "Microsoft Input Management Device",
        256,
    ),
    (
        "9cb98db1-4d09-4538-a192-2d3d8c0b6cdb",
        "Microsoft Rdp Encoder",
        256,
    ),
    (
        "ba8735ef-e3a9-4f1b-badd-dbf3a5909915",
        "Microsoft Video Monitor",
        256,
    ),
    (
        "e3c82929-edb4-475e-85a4-29aaa2a30c2d",
        "Microsoft Dynamic Memory Controller",
        512,
    ),
    (
        "8e3a359f-559a-4b6a-98a9-1690a6100ed7",
        "Microsoft Emulated Serial Controller",
        512,
    ),
    (
        "58f75a6d-d949-4320-99e1-a2a2576d581c",
        "Microsoft Synthetic Mouse",
        512,
    ),
    (
        "197f74e3-b84b-46de-8ae6-82f1cd181cdc",
        "Microsoft Synthetic Keyboard",
        256,
    ),
    (
        "f3cf6965-e8d3-44a9-9b7d-a04245ea7525",
        "Microsoft Synthetic Video",
        768,
    ),
    (
        "6c09bb55-d683-4da0-8931-c9bf705f6480",
        "Microsoft Guest Interface Component",
        256,
    ),
    (
        "84eaae65-2f2e-45f5-9bb5-0e857dc8eb47",
        "Microsoft Heartbeat Component",
        256,
    ),
    (
        "2a34b1c2-fd73-4043-8a5b-dd2159bc743f",
        "Microsoft Key-Value Pair Exchange Component",
        256,
    ),
    (
        "9f8233ac-be49-4c79-8ee3-e7e1985b2077",
        "Microsoft Shutdown Component",
        256,
    ),
    (
        "2497f4de-e9fa-4204-80e4-4b75c46419c0",
        "Microsoft Time Synchronization Component",
        256,
    ),
    (
        "5ced1297-4598-4915-a5fc-ad21bb4d02a4",
        "Microsoft VSS Component",
        512,
    ),
];

/// Generation 1's legacy devices.
const GEN1: &[(&str, &str, i64)] = &[
    (
        "9edd1639-9bca-40dc-b3a2-07c828da60b5",
        "Microsoft Emulated PIC",
        256,
    ),
    (
        "84535fad-4d98-4a6a-bdcd-21d5720dc430",
        "Microsoft Emulated PCI Bus",
        256,
    ),
    (
        "4d42d9f7-6531-4f6c-9e46-1f0477876104",
        "Microsoft Emulated ISA Bus",
        256,
    ),
    (
        "a28e4d02-3323-4148-9569-565930a5cb39",
        "Microsoft Emulated PIT",
        256,
    ),
    (
        "655bc5c5-a784-46b7-81bc-e26328f7eb0e",
        "Microsoft Emulated i8042 Device",
        512,
    ),
    (
        "87045ce9-5323-438f-93bb-1e83dcbce18e",
        "Microsoft Emulated DMA Controller",
        256,
    ),
    (
        "35b0b12f-a0d7-482f-80a0-f52f1ab3da2e",
        "Microsoft Emulated SuperIo Device",
        256,
    ),
    (
        "4d46d139-7821-4dc4-98a3-01e98a586a44",
        "Microsoft Emulated Speaker",
        256,
    ),
    (
        "7d80d3db-61ee-4879-8879-5609f1100ad0",
        "Microsoft S3 Video Device",
        512,
    ),
    (
        "8f0d2762-0b00-4e04-af4f-19010527cb93",
        "Microsoft Emulated Floppy Controller",
        256,
    ),
];

fn lower_guid() -> String {
    Uuid::new_v4().to_string()
}

fn upper_braced() -> String {
    format!("{{{}}}", Uuid::new_v4().to_string().to_ascii_uppercase())
}

/// The new VM's configuration keys.
pub fn vm_tree(t: &Template) -> Tree {
    let mut tr = Tree::new();
    let s = |tr: &mut Tree, k: &str, v: &str| {
        tr.set(k, Value::String(v.to_string()));
    };
    let i = |tr: &mut Tree, k: &str, v: i64| {
        tr.set(k, Value::Int(v));
    };
    let b = |tr: &mut Tree, k: &str, v: bool| {
        tr.set(k, Value::Bool(v));
    };
    let c = "/configuration";
    // properties
    s(&mut tr, keys::GLOBAL_ID, t.id);
    b(&mut tr, &format!("{c}/properties/highly_available"), false);
    i(&mut tr, &format!("{c}/properties/last_powered_off_time"), 0);
    i(&mut tr, &format!("{c}/properties/last_powered_on_time"), 0);
    i(
        &mut tr,
        &format!("{c}/properties/last_state_change_time"),
        0,
    );
    s(&mut tr, keys::NAME, t.name);
    s(&mut tr, &format!("{c}/properties/notes"), "");
    i(
        &mut tr,
        keys::SUBTYPE,
        if t.generation == 2 { 1 } else { 0 },
    );
    s(&mut tr, keys::TYPE_ID, "Virtual Machines");
    i(&mut tr, keys::VERSION, VERSION);
    tr.set(
        keys::CREATION_TIME,
        Value::Array(t.created.to_le_bytes().to_vec()),
    );
    // settings
    s(&mut tr, keys::LOGICAL_ID, t.id);
    b(
        &mut tr,
        &format!("{c}/settings/guest_controlled_cache_types"),
        false,
    );
    let m = format!("{c}/settings/memory/bank");
    i(&mut tr, &format!("{m}/backing_type"), 0);
    b(&mut tr, &format!("{m}/dynamic_memory_enabled"), false);
    i(&mut tr, &format!("{m}/limit"), 1_048_576);
    i(&mut tr, &format!("{m}/priority"), 5000);
    i(&mut tr, &format!("{m}/reservation"), t.memory_mb.min(512));
    i(&mut tr, keys::MEMORY_MB, t.memory_mb);
    i(&mut tr, &format!("{m}/target_memory_buffer"), 20);
    let p = format!("{c}/settings/processors");
    i(&mut tr, keys::PROCESSORS, t.processors);
    i(&mut tr, &format!("{p}/limit"), 100_000);
    i(&mut tr, &format!("{p}/reservation"), 0);
    i(&mut tr, &format!("{p}/weight"), 100);
    b(
        &mut tr,
        &format!("{p}/nested_virtualization/enabled"),
        false,
    );
    i(
        &mut tr,
        &format!("{c}/settings/topology/high_mmio_gap_mb"),
        512,
    );
    i(
        &mut tr,
        &format!("{c}/settings/topology/low_mmio_gap_mb"),
        128,
    );
    b(&mut tr, &format!("{c}/settings/vnuma/enabled"), true);
    // global_settings
    let g = format!("{c}/global_settings");
    i(&mut tr, &format!("{g}/critical_error/action"), 1);
    i(&mut tr, &format!("{g}/critical_error/timeout"), 1800);
    i(&mut tr, &format!("{g}/devices/cpu_architecture"), 1);
    s(
        &mut tr,
        &format!("{g}/devices/generation_id"),
        &Uuid::new_v4().simple().to_string(),
    );
    b(&mut tr, &format!("{g}/disk_merge_pending"), false);
    i(&mut tr, &format!("{g}/power/host_shutdown/action"), 1);
    i(&mut tr, &format!("{g}/power/host_startup/action"), 1);
    b(&mut tr, &format!("{g}/snapshots/enable_automatic"), false);
    i(&mut tr, &format!("{g}/snapshots/list/size"), 0);
    i(&mut tr, keys::CHECKPOINT_TYPE, t.checkpoint_type.value());
    i(&mut tr, &format!("{g}/unexpected_termination/action"), 1);
    b(&mut tr, &format!("{g}/vhd_path_acled"), false);
    // Devices: the manifest, then a node per instance.
    let mut devices: Vec<(String, String, String, i64)> = COMMON
        .iter()
        .chain(if t.generation == 2 { &[][..] } else { GEN1 })
        .map(|(d, n, v)| (d.to_string(), d.to_string(), n.to_string(), *v))
        .collect();
    let scsi_instance = lower_guid();
    let (ide_disks, scsi_disks): (&[std::path::PathBuf], &[std::path::PathBuf]) =
        if t.generation == 2 {
            (&[], t.disks)
        } else {
            t.disks.split_at(t.disks.len().min(4))
        };
    if t.generation != 2 {
        devices.push((
            IDE_CONTROLLER.into(),
            IDE_CONTROLLER.into(),
            "Microsoft Emulated IDE Controller".into(),
            1792,
        ));
    }
    if t.generation == 2 || !scsi_disks.is_empty() {
        devices.push((
            SCSI_CONTROLLER.into(),
            scsi_instance.clone(),
            "Synthetic SCSI Controller".into(),
            512,
        ));
    }
    i(&mut tr, &format!("{c}/manifest/version"), 512);
    i(&mut tr, &format!("{c}/manifest/size"), devices.len() as i64);
    for (n, (device, instance, name, _)) in devices.iter().enumerate() {
        let v = format!("{c}/manifest/vdev{:03}", n + 1);
        s(&mut tr, &format!("{v}/device"), device);
        s(&mut tr, &format!("{v}/instance"), instance);
        s(&mut tr, &format!("{v}/name"), name);
        i(&mut tr, &format!("{v}/flags"), 1);
    }
    for (_, instance, _, version) in &devices {
        i(&mut tr, &format!("{c}/_{instance}_/VDEVVersion"), *version);
    }
    let drive = |tr: &mut Tree, node: &str, path: &Path| {
        s(tr, &format!("{node}/type"), "VHD");
        s(tr, &format!("{node}/pathname"), &path.display().to_string());
        i(tr, &format!("{node}/iops_limit"), 0);
        i(tr, &format!("{node}/iops_reservation"), 0);
        i(tr, &format!("{node}/weight"), 100);
        s(
            tr,
            &format!("{node}/qos_policy_id"),
            "00000000-0000-0000-0000-000000000000",
        );
        b(
            tr,
            &format!("{node}/persistent_reservations_supported"),
            false,
        );
        b(tr, &format!("{node}/ignore_flushes"), false);
        i(tr, &format!("{node}/caching_mode"), 0);
        i(tr, &format!("{node}/write_hardening_method"), 0);
    };
    if t.generation != 2 {
        for n in 0..4 {
            let node = format!("{c}/_{IDE_CONTROLLER}_/controller{}/drive{}", n / 2, n % 2);
            match ide_disks.get(n) {
                Some(d) => drive(&mut tr, &node, d),
                None => {
                    s(&mut tr, &format!("{node}/type"), "NONE");
                    s(&mut tr, &format!("{node}/pathname"), "");
                }
            }
        }
    }
    if t.generation == 2 || !scsi_disks.is_empty() {
        s(
            &mut tr,
            &format!("{c}/_{scsi_instance}_/ChannelInstanceGuid"),
            &upper_braced(),
        );
        for (n, d) in scsi_disks.iter().enumerate() {
            drive(
                &mut tr,
                &format!("{c}/_{scsi_instance}_/controller0/drive{n}"),
                d,
            );
        }
    }
    // Firmware.
    let fw = format!("{c}/_ac6b8dc1-3257-4a70-b1b2-a9c9215659ad_");
    s(
        &mut tr,
        &format!("{fw}/bios_guid"),
        &format!("{{{}}}", lower_guid()),
    );
    for (n, dev) in ["HardDrive", "Optical", "Network", "Floppy"]
        .iter()
        .enumerate()
    {
        s(&mut tr, &format!("{fw}/boot/device{n}"), dev);
    }
    b(&mut tr, &format!("{fw}/num_lock"), false);
    b(
        &mut tr,
        &format!("{fw}/secure_boot_enabled"),
        t.generation == 2,
    );
    i(&mut tr, &format!("{fw}/pxe_preferred_protocol"), 4);
    // Ours.
    i(&mut tr, keys::HVKIT_VERSION, keys::OUR_VERSION);
    s(&mut tr, keys::CURRENT, "");
    tr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_reads_it() {
        let disks = vec![
            std::path::PathBuf::from("/v/a.vhdx"),
            std::path::PathBuf::from("/v/b.vhdx"),
        ];
        for generation in [1u8, 2] {
            let t = vm_tree(&Template {
                id: "6F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A5B",
                name: "web",
                generation,
                memory_mb: 2048,
                processors: 2,
                checkpoint_type: CheckpointType::Standard,
                created: 1,
                disks: &disks,
            });
            let m = vmcx::VmConfig::from_tree(&t);
            assert_eq!(m.name.as_deref(), Some("web"));
            assert_eq!(m.generation, Some(generation));
            assert_eq!(m.memory.startup_mb, Some(2048));
            assert_eq!(m.processors, Some(2));
            assert_eq!(m.checkpoint_type, Some(CheckpointType::Standard));
            let paths: Vec<&str> = m
                .drives
                .iter()
                .filter(|d| d.kind == "VHD")
                .map(|d| d.path.as_str())
                .collect();
            assert_eq!(paths, vec!["/v/a.vhdx", "/v/b.vhdx"]);
        }
    }
}
