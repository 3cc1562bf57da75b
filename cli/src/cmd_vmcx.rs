//! `hvkit vmcx`: HyperVStorage files (.vmcx, .vmrs, data.vmcx).

use crate::{CliError, CliResult};
use std::path::PathBuf;
use std::process::ExitCode;
use vmcx::{KeyType, OpenOptions, Store, Tree, Value, VmConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Print every key with its type and value
    Dump(DumpArgs),
    /// Write a new file from `dump --json` output
    New(NewArgs),
    /// Show the VM the file describes: name, id, generation, memory, processors, checkpoint type, disks, network
    Show(ShowArgs),
    /// Verify every structure and checksum; exit 0 clean, 2 corrupt, 3 replay log pending, 1 other error
    Check(CheckArgs),
    /// Set one typed value (created if missing) as one crash-safe transaction through the replay log
    Set(SetArgs),
}

#[derive(clap::Args, Debug)]
struct ShowArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The .vmcx or .vmrs file
    file: PathBuf,
    /// Apply a pending replay log to the file
    #[arg(long)]
    repair: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct SetArgs {
    /// The .vmcx or .vmrs file (edited in place)
    file: PathBuf,
    /// Slash path of the key, e.g. /configuration/settings/processors/count (NAME[I] picks one of several siblings)
    key: String,
    /// The new value (array: hex digits; bool: true/false)
    value: String,
    /// Value type; default: the existing key's type (required for a new key)
    #[arg(long, value_parser = type_arg)]
    r#type: Option<KeyType>,
    /// Print the old and new value as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct NewArgs {
    /// The file to write (replaced atomically if it exists)
    file: PathBuf,
    /// JSON as `hvkit vmcx dump --json` prints it ('-' reads stdin)
    #[arg(long)]
    from: PathBuf,
    /// Print what was written as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct OpenArgs {
    /// The .vmcx or .vmrs file
    file: PathBuf,
    /// Report failed checks and go on instead of stopping at the first
    #[arg(long)]
    lenient: bool,
}

impl OpenArgs {
    fn open(&self) -> Result<Store, CliError> {
        Ok(Store::open_with(
            &self.file,
            OpenOptions {
                lenient: self.lenient,
                ..OpenOptions::default()
            },
        )?)
    }
}

#[derive(clap::Args, Debug)]
struct DumpArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Print JSON: nested {"type", "value"} objects (arrays as hex; siblings sharing a name as a JSON array)
    #[arg(long)]
    json: bool,
}

impl From<vmcx::Error> for CliError {
    fn from(e: vmcx::Error) -> Self {
        let code = if matches!(e, vmcx::Error::Corrupt { .. }) {
            2
        } else {
            1
        };
        CliError::new(e.to_string(), code)
    }
}

pub fn run(a: Args) -> CliResult {
    match a.command {
        Sub::Dump(d) => dump(d),
        Sub::New(n) => new(n),
        Sub::Show(a) => show(a),
        Sub::Set(a) => set(a),
        Sub::Check(a) => check(a),
    }
}

fn report_problems(store: &Store) {
    for p in store.problems() {
        eprintln!("hvkit: warning: {} (offset {:#x})", p.message, p.offset);
    }
}

fn dump(a: DumpArgs) -> CliResult {
    let store = a.open.open()?;
    report_problems(&store);
    let tree = store.tree();
    if a.json {
        let j = vmcx::json::to_json(tree, Tree::ROOT, &|id| store.value(id))?;
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    for id in tree.walk() {
        let k = tree.key(id);
        let shown = match k.value {
            // Large file objects (saved memory) are not read whole for a
            // text listing: their start is enough.
            Value::Blob(b) if b.len > 1 << 16 => {
                let mut head = [0u8; 32];
                std::io::Read::read_exact(&mut store.blob_reader(b), &mut head)?;
                format!(
                    "{} bytes in a file object at {:#x}, starting {}...",
                    b.len,
                    b.offset,
                    vmcx::tree::to_hex(&head)
                )
            }
            _ => show_value(&store.value(id)?, k.next_insertion),
        };
        println!(
            "{} | {} | {}",
            tree.path(id),
            k.value.key_type().name(),
            shown
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A value as one line of text.
pub fn show_value(v: &Value, next_insertion: u32) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Double(d) => d.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(b) => {
            let hex = vmcx::tree::to_hex(&b[..b.len().min(32)]);
            format!(
                "{} bytes {hex}{}",
                b.len(),
                if b.len() > 32 { "..." } else { "" }
            )
        }
        Value::Bool(b) => b.to_string(),
        Value::Node => format!("next_insertion={next_insertion}"),
        Value::Blob(b) => format!("file object {} bytes at {:#x}", b.len, b.offset),
    }
}

fn type_arg(s: &str) -> Result<KeyType, String> {
    KeyType::from_name(s).ok_or_else(|| format!("unknown type {s:?}"))
}

fn new(a: NewArgs) -> CliResult {
    let text = if a.from.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.from)
            .map_err(|e| CliError::new(format!("{}: {e}", a.from.display()), 1))?
    };
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::new(format!("{}: not JSON: {e}", a.from.display()), 1))?;
    let tree = vmcx::json::from_json(&j)?;
    let l = vmcx::writer::create(&a.file, &tree, &|_| unreachable!("JSON values are inline"))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"file": a.file, "keys": tree.len() - 1, "key_tables": l.key_tables,
                "file_objects": l.file_objects, "object_tables": l.object_tables, "bytes": l.file_len})
        );
    } else {
        println!(
            "{}: {} keys in {} key tables, {} file objects, {} object tables, {} bytes",
            a.file.display(),
            tree.len() - 1,
            l.key_tables,
            l.file_objects,
            l.object_tables,
            l.file_len
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn set(a: SetArgs) -> CliResult {
    let mut store = Store::open_with(
        &a.file,
        OpenOptions {
            write: true,
            ..OpenOptions::default()
        },
    )?;
    let existing = match store.tree().find(store.name(), &a.key) {
        Ok(id) => Some(id),
        Err(vmcx::Error::NoSuchKey { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let old = existing.map(|id| store.value(id)).transpose()?;
    let ty = match (a.r#type, &old) {
        (Some(t), _) => t,
        (None, Some(v)) => v.key_type(),
        (None, None) => {
            return Err(CliError::new(
                format!(
                    "{}: no key {}; give --type to create it",
                    a.file.display(),
                    a.key
                ),
                1,
            ))
        }
    };
    let value = Value::parse(ty, &a.value)?;
    store.set(&a.key, value)?;
    let id = store.tree().find(store.name(), &a.key)?;
    let new = store.value(id)?;
    let show = |v: &Option<Value>| v.as_ref().map(|v| show_value(v, 0));
    if a.json {
        println!(
            "{}",
            serde_json::json!({"file": a.file, "key": store.tree().path(id), "type": ty.name(),
                "old": show(&old), "new": show(&Some(new))})
        );
    } else {
        match old {
            Some(o) => println!(
                "{}: {} = {} (was {})",
                a.file.display(),
                store.tree().path(id),
                show_value(&new, 0),
                show_value(&o, 0)
            ),
            None => println!(
                "{}: {} = {} (new {} key)",
                a.file.display(),
                store.tree().path(id),
                show_value(&new, 0),
                ty.name()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: ShowArgs) -> CliResult {
    use serde_json::json;
    use vmcx::model::{filetime_to_string, version_string};
    let store = a.open.open()?;
    report_problems(&store);
    let t = store.tree();
    let top: Vec<String> = t
        .children(Tree::ROOT)
        .iter()
        .map(|&c| t.key(c).name.clone())
        .collect();
    let j = if VmConfig::is_vm(t) {
        let v = store.vm_config();
        json!({
            "file": a.open.file,
            "kind": "vm-configuration",
            "name": v.name, "id": v.id, "generation": v.generation,
            "created": v.creation_filetime.map(filetime_to_string),
            "version": v.version.map(version_string),
            "memory": {"startup_mb": v.memory.startup_mb, "dynamic": v.memory.dynamic,
                "minimum_mb": v.memory.minimum_mb, "maximum_mb": v.memory.maximum_mb,
                "buffer_percent": v.memory.buffer_percent},
            "processors": v.processors,
            "checkpoint_type": v.checkpoint_type.map(|c| c.name()),
            "checkpoint_type_value": v.checkpoint_type_raw,
            "automatic_checkpoints": v.automatic_checkpoints,
            "checkpoint_location": v.checkpoint_location,
            "data_root": v.data_root,
            "guest_state_file": v.guest_state_file,
            "drives": v.drives.iter().map(|d| json!({"controller": d.controller_kind,
                "controller_instance": d.controller_instance, "controller_number": d.controller,
                "location": d.location, "type": d.kind, "path": d.path})).collect::<Vec<_>>(),
            "network_adapters": v.network_adapters.iter().map(|n| json!({"name": n.name,
                "instance": n.instance, "mac": n.mac, "static_mac": n.static_mac,
                "switch": n.switch, "connected": n.connected})).collect::<Vec<_>>(),
        })
    } else if let Some(vms) = t.find_all("/Configurations/VirtualMachines").first() {
        json!({
            "file": a.open.file,
            "kind": "host-inventory",
            "virtual_machines": t.children(*vms).iter().map(|&c| json!({"id": t.key(c).name.trim_matches('_'),
                "config": match &t.key(c).value { Value::String(s) => s.clone(), _ => String::new() }})).collect::<Vec<_>>(),
        })
    } else {
        json!({"file": a.open.file, "kind": "other", "top_level": top})
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    let s = |k: &str| match &j[k] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        o => o.to_string(),
    };
    println!("File:              {}", a.open.file.display());
    match j["kind"].as_str() {
        Some("vm-configuration") => {
            println!("VM name:           {}", s("name"));
            println!("VM id:             {}", s("id"));
            println!("Generation:        {}", s("generation"));
            println!("Created:           {}", s("created"));
            println!("Config version:    {}", s("version"));
            let m = &j["memory"];
            let mb = |k: &str| m[k].as_i64().map_or("-".into(), |v| format!("{v} MiB"));
            println!(
                "Memory:            {} startup, dynamic {}{}",
                mb("startup_mb"),
                m["dynamic"]
                    .as_bool()
                    .map_or("-", |d| if d { "on" } else { "off" }),
                if m["dynamic"].as_bool() == Some(true) {
                    format!(
                        " (minimum {}, maximum {}, buffer {}%)",
                        mb("minimum_mb"),
                        mb("maximum_mb"),
                        m["buffer_percent"]
                    )
                } else {
                    String::new()
                }
            );
            println!("Processors:        {}", s("processors"));
            println!(
                "Checkpoint type:   {} (user_type {})",
                s("checkpoint_type"),
                s("checkpoint_type_value")
            );
            println!("Auto checkpoints:  {}", s("automatic_checkpoints"));
            println!("Checkpoint folder: {}", s("checkpoint_location"));
            println!("Guest state file:  {}", s("guest_state_file"));
            println!("Drives:");
            for d in j["drives"].as_array().into_iter().flatten() {
                println!(
                    "  {} {}:{}  {:<4} {}",
                    d["controller"].as_str().unwrap_or(""),
                    d["controller_number"],
                    d["location"],
                    d["type"].as_str().unwrap_or(""),
                    d["path"]
                        .as_str()
                        .filter(|p| !p.is_empty())
                        .unwrap_or("(empty)")
                );
            }
            println!("Network adapters:");
            for n in j["network_adapters"].as_array().into_iter().flatten() {
                println!(
                    "  {}  MAC {} ({})  switch {:?}  connected {}",
                    n["name"].as_str().unwrap_or(""),
                    n["mac"].as_str().unwrap_or(""),
                    if n["static_mac"].as_bool() == Some(true) {
                        "static"
                    } else {
                        "dynamic"
                    },
                    n["switch"].as_str().unwrap_or(""),
                    n["connected"]
                );
            }
        }
        Some("host-inventory") => {
            println!("Kind:              host inventory (data.vmcx)");
            for v in j["virtual_machines"].as_array().into_iter().flatten() {
                println!(
                    "  VM {}  {}",
                    v["id"].as_str().unwrap_or(""),
                    v["config"].as_str().unwrap_or("")
                );
            }
        }
        _ => println!(
            "Kind:              not a VM configuration; top-level keys: {}",
            top.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(a: CheckArgs) -> CliResult {
    let lenient = OpenOptions {
        lenient: true,
        ..OpenOptions::default()
    };
    let store = Store::open_with(&a.file, lenient)?;
    let pending = store.log().pending.len();
    let mut repaired = false;
    if pending > 0 && a.repair {
        Store::open_with(
            &a.file,
            OpenOptions {
                write: true,
                lenient: true,
                ..OpenOptions::default()
            },
        )?;
        repaired = true;
    }
    let problems: Vec<_> = store
        .problems()
        .iter()
        .filter(|p| !p.message.contains("replaced bad units"))
        .collect();
    let (slot, headers) = store.headers();
    let st = store.stats();
    let code = if !problems.is_empty() {
        2
    } else if pending > 0 && !repaired {
        3
    } else {
        0
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "file": a.file,
                "status": match code { 0 => "clean", 2 => "corrupt", _ => "log-needs-replay" },
                "active_header": slot,
                "header_sequences": headers.iter().map(|h| h.map(|h| h.sequence)).collect::<Vec<_>>(),
                "keys": st.keys, "free_entries": st.free_entries, "file_objects": st.file_objects,
                "key_tables": store.key_tables().len(), "object_tables": store.object_tables().len(),
                "checksums_verified": st.checksums_verified,
                "log_pending_records": pending, "repaired": repaired,
                "problems": store.problems().iter().map(|p| serde_json::json!({"offset": p.offset, "message": p.message})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "{}: {} keys in {} key tables, {} object table(s), {} file objects; {} checksums verified; header copy {} active (sequences {:?})",
            a.file.display(),
            st.keys,
            store.key_tables().len(),
            store.object_tables().len(),
            st.file_objects,
            st.checksums_verified,
            slot,
            headers.iter().map(|h| h.map(|h| h.sequence)).collect::<Vec<_>>()
        );
        for p in store.problems() {
            println!("  problem at {:#x}: {}", p.offset, p.message);
        }
        match (pending, repaired) {
            (0, _) => println!("  replay log: clean"),
            (n, true) => println!("  replay log: {n} pending record(s) applied to the file"),
            (n, false) => println!("  replay log: {n} pending record(s) (applied in memory above; --repair writes them)"),
        }
        println!(
            "  status: {}",
            match code {
                0 => "clean",
                2 => "corrupt",
                _ => "log needs replay",
            }
        );
    }
    Ok(ExitCode::from(code))
}
