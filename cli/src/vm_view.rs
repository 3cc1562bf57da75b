//! How `hvkit vm info` and `hvkit checkpoint list` show a VM folder: the
//! documented JSON schema (README "vm info --json") and the text view
//! with the checkpoint tree drawn as a tree.

use crate::cmd_info::human;
use crate::CliError;
use checkpoint::layout::filetime_rfc3339;
use checkpoint::{Checkpoint, CheckpointType, VmFolder};
use serde_json::{json, Value as J};

impl From<checkpoint::Error> for CliError {
    fn from(e: checkpoint::Error) -> Self {
        let code = if e.is_corruption() { 2 } else { 1 };
        CliError::new(e.to_string(), code)
    }
}

/// Prints a JSON document for scripts, pretty.
pub fn print_json(v: &J) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

/// The CLI's spelling of a checkpoint type.
pub fn type_name(t: CheckpointType) -> &'static str {
    match t {
        CheckpointType::Disabled => "disabled",
        CheckpointType::Production => "production",
        CheckpointType::ProductionOnly => "production-only",
        CheckpointType::Standard => "standard",
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeArg {
    Disabled,
    Production,
    ProductionOnly,
    Standard,
}

impl TypeArg {
    pub fn get(self) -> CheckpointType {
        match self {
            TypeArg::Disabled => CheckpointType::Disabled,
            TypeArg::Production => CheckpointType::Production,
            TypeArg::ProductionOnly => CheckpointType::ProductionOnly,
            TypeArg::Standard => CheckpointType::Standard,
        }
    }
}

fn path(p: &std::path::Path) -> J {
    J::String(p.display().to_string())
}

pub fn checkpoint_json(c: &Checkpoint) -> J {
    json!({
        "id": c.id,
        "name": c.name,
        "parent": c.parent,
        "created": filetime_rfc3339(c.created),
        "kind": c.kind.name(),
        "has_memory": c.has_memory,
        "disks": c.disks.iter().map(|d| path(&d.path)).collect::<Vec<_>>(),
        "config": path(&c.config_path),
    })
}

/// The `vm info --json` document.
pub fn folder_json(f: &VmFolder) -> J {
    json!({
        "id": f.vm.id,
        "name": f.vm.name,
        "generation": f.vm.generation,
        "memory_mb": f.vm.memory_mb,
        "processors": f.vm.processors,
        "checkpoint_type": f.vm.checkpoint_type.map(type_name),
        "checkpoint_type_value": f.vm.checkpoint_type_raw,
        "state": f.vm.state.name(),
        "version": f.vm.version.map(vmcx::model::version_string),
        "folder": path(&f.folder),
        "config": path(&f.config_path),
        "checkpoint_location": path(&f.snapshot_dir),
        "legacy": f.legacy,
        "disks": f.disks.iter().map(|d| json!({
            "slot": d.slot.to_string(),
            "path": path(&d.path),
            "chain": d.chain.iter().map(|p| path(p)).collect::<Vec<_>>(),
            "virtual_size": d.virtual_size,
        })).collect::<Vec<_>>(),
        "checkpoints": f.checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
        "current": f.current,
        "pending": f.pending.as_ref().map(|p| p.describe()),
        "problems": f.problems,
    })
}

fn label(c: &Checkpoint) -> String {
    format!(
        "{}  ({}, {}{}) {}",
        c.name,
        filetime_rfc3339(c.created)
            .replace('T', " ")
            .trim_end_matches('Z'),
        c.kind.name(),
        if c.has_memory { ", memory" } else { "" },
        c.id
    )
}

/// The checkpoint tree as lines, "Now" below the current checkpoint.
pub fn tree_lines(f: &VmFolder) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(f: &VmFolder, parent: Option<&str>, prefix: &str, out: &mut Vec<String>) {
        let mut kids: Vec<String> = f
            .checkpoints
            .iter()
            .filter(|c| c.parent.as_deref() == parent)
            .map(|c| c.id.clone())
            .collect();
        let now = f.current.as_deref() == parent;
        if now {
            kids.push(String::new());
        }
        let n = kids.len();
        for (i, id) in kids.into_iter().enumerate() {
            let last = i + 1 == n;
            let (branch, next) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            if id.is_empty() {
                out.push(format!("{prefix}{branch}Now"));
                continue;
            }
            let c = f.checkpoint(&id).expect("listed");
            out.push(format!("{prefix}{branch}{}", label(c)));
            walk(f, Some(&id), &format!("{prefix}{next}"), out);
        }
    }
    walk(f, None, "", &mut out);
    out
}

/// A disk's chain by file name, leaf first: `a.avhdx <- b.avhdx <- base.vhdx`.
pub fn chain_names(d: &checkpoint::Disk) -> String {
    d.chain
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// The text view of `vm info`.
pub fn print_folder(f: &VmFolder) {
    println!("VM:                 {} ({})", f.vm.name, f.vm.id);
    println!("folder:             {}", f.folder.display());
    println!(
        "configuration:      {}{}",
        f.config_path.display(),
        if f.legacy {
            " (2012 R2 XML, read-only)"
        } else {
            ""
        }
    );
    let mut line = Vec::new();
    if let Some(g) = f.vm.generation {
        line.push(format!("generation {g}"));
    }
    if let Some(m) = f.vm.memory_mb {
        line.push(format!("{m} MiB memory"));
    }
    if let Some(p) = f.vm.processors {
        line.push(format!("{p} processor{}", if p == 1 { "" } else { "s" }));
    }
    if let Some(v) = f.vm.version {
        line.push(format!(
            "configuration version {}",
            vmcx::model::version_string(v)
        ));
    }
    println!("settings:           {}", line.join(", "));
    println!(
        "checkpoint type:    {}",
        match (f.vm.checkpoint_type, f.vm.checkpoint_type_raw) {
            (Some(t), _) => type_name(t).to_string(),
            (None, Some(v)) => format!("unknown value {v}"),
            (None, None) => "not set (production)".into(),
        }
    );
    println!("checkpoint files:   {}", f.snapshot_dir.display());
    println!(
        "state:              {}",
        match f.vm.state {
            checkpoint::VmState::Off => "off",
            checkpoint::VmState::Saved =>
                "saved (its runtime state holds memory: it resumes where it was)",
        }
    );
    if let Some(p) = &f.pending {
        println!(
            "pending:            {} (any hvkit command on this VM completes it)",
            p.describe()
        );
    }
    println!("disks:");
    if f.disks.is_empty() {
        println!("  (none)");
    }
    for d in &f.disks {
        println!(
            "  {:<10}{} ({})",
            d.slot.to_string(),
            d.path.display(),
            human(d.virtual_size)
        );
        println!("  {:<10}chain: {}", "", chain_names(d));
    }
    println!("checkpoints:        {}", f.checkpoints.len());
    for l in tree_lines(f) {
        println!("  {l}");
    }
    for p in &f.problems {
        println!("problem:            {p}");
    }
}
