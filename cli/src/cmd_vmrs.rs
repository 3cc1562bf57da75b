//! `hvkit vmrs`: guest memory and vCPU state of Hyper-V saved states.

use crate::progress::bytes_bar;
use crate::{size_arg, CliError, CliResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use vmrs::extract::Format;
use vmrs::partition_state::{CONTROL_NAMES, GP_NAMES, SEGMENT_NAMES};
use vmrs::{MemoryPiece, SavedState, SavedStateSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Version, type, memory ranges, VPs and their registers
    Info(InfoArgs),
    /// Write guest-physical memory as a sparse raw image or an ELF core
    ExtractMemory(ExtractArgs),
    /// Build a saved state from raw memory pieces (and VP registers)
    Create(CreateArgs),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
enum CodecArg {
    /// Plain LZ77 (MS-XCA 2.3), what current Hyper-V versions are reported to use
    #[default]
    Xpress,
    /// LZNT1 (MS-XCA 2.5), an older encoding
    Lznt1,
}

fn open(file: &std::path::Path, codec: CodecArg) -> Result<SavedState, CliError> {
    let mut s = SavedState::open(file)?;
    s.set_page_codec(match codec {
        CodecArg::Xpress => vmrs::ram_block::PageCodec::Xpress,
        CodecArg::Lznt1 => vmrs::ram_block::PageCodec::Lznt1,
    });
    Ok(s)
}

#[derive(clap::Args, Debug)]
struct InfoArgs {
    /// The .vmrs file
    file: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    /// Byte at offset X is guest-physical address X; gaps are holes
    Raw,
    /// ELF64 core, one PT_LOAD per populated range
    Elf,
}

#[derive(clap::Args, Debug)]
struct ExtractArgs {
    /// The .vmrs file
    file: PathBuf,
    /// Output file
    #[arg(short, long)]
    output: PathBuf,
    /// How single compressed pages of compressed RamBlocks are encoded
    #[arg(long, value_enum, default_value = "xpress")]
    page_codec: CodecArg,
    #[arg(long, value_enum, default_value = "raw")]
    format: FormatArg,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Output .vmrs file
    #[arg(short, long)]
    output: PathBuf,
    /// A raw memory piece: FILE placed at guest-physical address GPA (default 0; hex with 0x, or K/M/G suffixes); repeatable
    #[arg(long = "memory", value_name = "RAW[@GPA]", required = true)]
    memory: Vec<String>,
    /// VP registers as JSON (a file, or '-' for stdin): [{"index": 0, "rip": "0x...", "cr3": ..., "cs": {"base", "limit", "selector", "attributes"}, "idtr": {"base", "limit"}, ...}]
    #[arg(long, value_name = "JSON")]
    vp_regs: Option<PathBuf>,
    /// Configuration version stored in /savedstate/VmVersion (e.g. 0x0A00 = 10.0)
    #[arg(long, default_value = "0x0A00", value_parser = parse_u64)]
    vm_version: u64,
    /// /savedstate/type
    #[arg(long, default_value = "Snapshot")]
    r#type: String,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).map_err(|e| e.to_string()),
        None => s
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string()),
    }
}

impl From<vmrs::Error> for CliError {
    fn from(e: vmrs::Error) -> Self {
        let code = match &e {
            vmrs::Error::Container(vmcx::Error::Corrupt { .. }) | vmrs::Error::Corrupt { .. } => 2,
            _ => 1,
        };
        CliError::new(e.to_string(), code)
    }
}

pub fn run(a: Args) -> CliResult {
    match a.command {
        Sub::Info(a) => info(a),
        Sub::ExtractMemory(a) => extract(a),
        Sub::Create(a) => create(a),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn info(a: InfoArgs) -> CliResult {
    let s = SavedState::open(&a.file)?;
    let vps = s
        .partition_state()
        .map(|p| p.vps.clone())
        .unwrap_or_default();
    let j = json!({
        "file": a.file,
        "schema": format!("{:?}", s.schema()).to_lowercase(),
        "vm_version": s.vm_version().map(vmcx::model::version_string),
        "type": s.kind(),
        "has_memory": s.has_memory(),
        "memory_bytes": s.memory_size(),
        "ram_blocks": s.block_count(),
        "ranges": s.ranges().iter().map(|r| json!({"gpa": format!("{:#x}", r.gpa), "len": r.len,
            "first_page": r.block.first_page, "flags": r.block.flags, "numa_node": r.block.virtual_node})).collect::<Vec<_>>(),
        "partition_state": s.partition_state().is_some(),
        "partition_state_error": s.partition_state_error(),
        "vendor": s.partition_state().and_then(|p| p.vendor).map(|v| match v { 0 => "AMD", 1 => "Intel", 2 => "Hygon", 0x10 => "ARM", _ => "unknown" }),
        "vp_count": vps.len(),
        "vps": vps.iter().map(vmrs::registers_json::to_json).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    println!("File:          {}", a.file.display());
    println!("VM version:    {}", j["vm_version"].as_str().unwrap_or("-"));
    println!("Saved-state type: {}", s.kind().unwrap_or("-"));
    if s.has_memory() {
        println!(
            "Memory:        {} in {} range(s), {} RamBlock(s)",
            mib(s.memory_size()),
            s.ranges().len(),
            s.block_count()
        );
        for r in s.ranges() {
            println!(
                "  {:#018x}-{:#018x}  {}",
                r.gpa,
                r.gpa + r.len - 1,
                mib(r.len)
            );
        }
    } else {
        println!("Memory:        no saved memory (no RamMemoryBlock0: a production checkpoint, a powered-off VM or a runtime-state file)");
    }
    match (s.partition_state(), s.partition_state_error()) {
        (Some(_), _) => {
            println!(
                "VPs:           {} (vendor {})",
                vps.len(),
                j["vendor"].as_str().unwrap_or("-")
            );
            for v in &vps {
                let gp: Vec<String> = GP_NAMES
                    .iter()
                    .zip(v.gp)
                    .map(|(n, x)| format!("{n}={x:#x}"))
                    .collect();
                let cr: Vec<String> = CONTROL_NAMES
                    .iter()
                    .zip(v.control)
                    .map(|(n, x)| format!("{n}={x:#x}"))
                    .collect();
                println!("  VP {}:", v.index);
                println!("    {}", gp.join(" "));
                println!("    {} xcr0={:#x} cpl={}", cr.join(" "), v.xcr0, v.cpl);
                for (n, sg) in SEGMENT_NAMES.iter().zip(v.segments) {
                    print!(
                        "    {n}={:#x}/{:#x}/{:#x}/{:#x}",
                        sg.selector, sg.base, sg.limit, sg.attributes
                    );
                }
                println!();
                println!(
                    "    idtr={:#x}/{:#x} gdtr={:#x}/{:#x}",
                    v.idtr.base, v.idtr.limit, v.gdtr.base, v.gdtr.limit
                );
            }
        }
        (None, Some(e)) => println!("VPs:           partition state unreadable: {e}"),
        (None, None) => println!("VPs:           no partition state"),
    }
    Ok(ExitCode::SUCCESS)
}

fn extract(a: ExtractArgs) -> CliResult {
    let s = open(&a.file, a.page_codec)?;
    if !s.has_memory() {
        return Err(CliError::new(
            format!("{}: no saved memory (no RamMemoryBlock0: a production checkpoint or a powered-off VM holds none)", a.file.display()),
            1,
        ));
    }
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&a.output)
        .map_err(|e| CliError::new(format!("{}: {e}", a.output.display()), 1))?;
    let format = match a.format {
        FormatArg::Raw => Format::Raw,
        FormatArg::Elf => Format::Elf,
    };
    let bar = bytes_bar(s.memory_size(), a.quiet || a.json);
    let t = Instant::now();
    let st = vmrs::extract::extract(&s, &out, format, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            json!({"file": a.file, "output": a.output, "format": format!("{format:?}").to_lowercase(), "ranges": st.ranges,
                "bytes": st.bytes, "copied_in_kernel": st.copied_in_kernel, "file_len": st.file_len, "seconds": secs})
        );
    } else if !a.quiet {
        println!(
            "{}: {} of guest memory in {} range(s) written ({} file), {:.3} s, {:.0} MiB/s",
            a.output.display(),
            mib(st.bytes),
            st.ranges,
            mib(st.file_len),
            secs,
            st.bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn create(a: CreateArgs) -> CliResult {
    let mut memory = Vec::new();
    for m in &a.memory {
        let (file, gpa) = match m.rsplit_once('@') {
            Some((f, g)) => {
                let gpa = if g.starts_with("0x") {
                    parse_u64(g)
                } else {
                    size_arg(g)
                };
                (
                    f,
                    gpa.map_err(|e| CliError::new(format!("--memory {m}: {e}"), 1))?,
                )
            }
            None => (m.as_str(), 0),
        };
        let f = std::fs::File::open(file).map_err(|e| CliError::new(format!("{file}: {e}"), 1))?;
        let len = f.metadata()?.len();
        memory.push(MemoryPiece {
            gpa,
            len,
            data: vmrs::writer::PieceData::File(f),
        });
    }
    let vps = match &a.vp_regs {
        None => vec![vmrs::VpRegisters::default()],
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(p)
                    .map_err(|e| CliError::new(format!("{}: {e}", p.display()), 1))?
            };
            let j: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::new(format!("{}: not JSON: {e}", p.display()), 1))?;
            vmrs::registers_json::from_json(&j)?
        }
    };
    let spec = SavedStateSpec {
        vm_version: a.vm_version as i64,
        kind: Some(a.r#type.clone()),
        memory,
        vps,
        extra: Vec::new(),
    };
    let l = vmrs::writer::create(&a.output, &spec)?;
    let total: u64 = spec.memory.iter().map(|m| m.len).sum();
    if a.json {
        println!(
            "{}",
            json!({"output": a.output, "memory_bytes": total, "ranges": spec.memory.len(), "vps": spec.vps.len(),
                "file_objects": l.file_objects, "object_tables": l.object_tables, "file_len": l.file_len})
        );
    } else {
        println!(
            "{}: {} of memory in {} range(s), {} VP(s); {} bytes",
            a.output.display(),
            mib(total),
            spec.memory.len(),
            spec.vps.len(),
            l.file_len
        );
    }
    Ok(ExitCode::SUCCESS)
}
