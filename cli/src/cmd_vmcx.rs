//! `hvkit vmcx`: HyperVStorage files (.vmcx, .vmrs, data.vmcx).

use crate::{CliError, CliResult};
use std::path::PathBuf;
use std::process::ExitCode;
use vmcx::{KeyType, OpenOptions, Store, Tree, Value};

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
        let v = store.value(id)?;
        println!(
            "{} | {} | {}",
            tree.path(id),
            k.value.key_type().name(),
            show_value(&v, k.next_insertion)
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

#[allow(dead_code)]
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
