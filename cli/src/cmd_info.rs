//! `hvkit info`: what a VHDX/AVHDX file is.

use crate::image_arg::ChainArgs;
use crate::CliResult;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use vhdx::{LogStatus, OpenOptions, VhdxFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VHDX or AVHDX file
    file: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    chain: ChainArgs,
}

pub fn run(a: Args) -> CliResult {
    let f = VhdxFile::open_path(&a.file, OpenOptions::read_only())?;
    let mut v = describe(&f);
    let chain = if f.has_parent() {
        match a.chain.open(&a.file) {
            Ok(d) => Ok(d
                .layers()
                .iter()
                .map(|l| layer_summary(&l.file))
                .collect::<Vec<_>>()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Ok(vec![layer_summary(&f)])
    };
    match &chain {
        Ok(c) => v["chain"] = json!(c),
        Err(e) => v["chain_error"] = json!(e),
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print_text(&v);
    }
    Ok(ExitCode::SUCCESS)
}

fn layer_summary(f: &VhdxFile) -> Value {
    json!({
        "path": f.path(),
        "type": f.disk_type(),
        "virtual_size": f.virtual_size(),
        "data_write_guid": f.header().data_write_guid.to_string(),
        "parent_linkage": f.parent_locator().and_then(|l| l.get("parent_linkage")),
    })
}

/// Everything `info` reports about one file, as JSON.
pub fn describe(f: &VhdxFile) -> Value {
    let h = f.header();
    let m = f.metadata();
    let s = f.bat_stats();
    let (state, entries) = match f.log_status() {
        LogStatus::Clean => ("clean", 0),
        LogStatus::ReplayedInMemory(p) => ("needs_replay", p.entries.len()),
        LogStatus::ReplayedOnDisk(p) => ("replayed", p.entries.len()),
    };
    json!({
        "path": f.path(),
        "type": f.disk_type(),
        "virtual_size": f.virtual_size(),
        "block_size": f.block_size(),
        "logical_sector_size": m.logical_sector_size,
        "physical_sector_size": m.physical_sector_size,
        "file_size": f.file_len(),
        "creator": f.creator(),
        "virtual_disk_id": m.virtual_disk_id.to_string(),
        "leave_block_allocated": m.file_parameters.leave_block_allocated,
        "has_parent": m.file_parameters.has_parent,
        "header": {
            "current_slot": f.header_slot() + 1,
            "sequence_number": h.sequence_number,
            "file_write_guid": h.file_write_guid.to_string(),
            "data_write_guid": h.data_write_guid.to_string(),
            "log_guid": h.log_guid.to_string(),
        },
        "log": {
            "state": state,
            "active_entries": entries,
            "offset": h.log_offset,
            "length": h.log_length,
        },
        "regions": f.region_table().entries.iter().map(|r| json!({
            "guid": r.guid.to_string(),
            "name": match r.guid {
                vhdx::format::guids::BAT_REGION => "bat",
                vhdx::format::guids::METADATA_REGION => "metadata",
                _ => "unknown",
            },
            "offset": r.file_offset,
            "length": r.length,
            "required": r.required,
        })).collect::<Vec<_>>(),
        "bat": {
            "entries": f.bat().len(),
            "payload_blocks": f.geometry().payload_blocks,
            "chunk_ratio": f.geometry().chunk_ratio,
            "not_present": s.not_present,
            "undefined": s.undefined,
            "zero": s.zero,
            "unmapped": s.unmapped,
            "fully_present": s.fully_present,
            "partially_present": s.partially_present,
            "invalid": s.invalid,
            "sector_bitmap_blocks": s.bitmap_blocks_present,
            "bytes_allocated": s.bytes_allocated,
        },
        "parent_locator": f.parent_locator().map(|l| l.entries.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()),
        "problems": f.problems().iter().map(problem_json).collect::<Vec<_>>(),
    })
}

/// One structural problem as JSON (shared by `info` and `check`).
pub fn problem_json(p: &vhdx::Problem) -> Value {
    json!({
        "severity": format!("{:?}", p.severity).to_lowercase(),
        "what": p.what,
        "offset": p.offset,
        "message": p.message,
    })
}

pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {} ({n} bytes)", UNITS[u])
    }
}

pub fn print_text(v: &Value) {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    println!("file:                 {}", v["path"].as_str().unwrap_or(""));
    println!("type:                 {}", v["type"].as_str().unwrap_or(""));
    println!("virtual size:         {}", human(n("virtual_size")));
    println!("block size:           {}", human(n("block_size")));
    println!(
        "sector size:          {} logical, {} physical",
        n("logical_sector_size"),
        n("physical_sector_size")
    );
    println!("file size:            {}", human(n("file_size")));
    println!(
        "creator:              {}",
        v["creator"].as_str().unwrap_or("")
    );
    println!(
        "virtual disk id:      {}",
        v["virtual_disk_id"].as_str().unwrap_or("")
    );
    let h = &v["header"];
    println!(
        "header:               slot {} of 2, sequence {}",
        h["current_slot"], h["sequence_number"]
    );
    println!(
        "file write guid:      {}",
        h["file_write_guid"].as_str().unwrap_or("")
    );
    println!(
        "data write guid:      {}",
        h["data_write_guid"].as_str().unwrap_or("")
    );
    println!(
        "log guid:             {}",
        h["log_guid"].as_str().unwrap_or("")
    );
    let l = &v["log"];
    match l["state"].as_str() {
        Some("needs_replay") => println!(
            "log:                  NEEDS REPLAY ({} active entries; replayed in memory for reading, `hvkit check --repair` writes it)",
            l["active_entries"]
        ),
        Some(s) => println!("log:                  {s}"),
        None => {}
    }
    let b = &v["bat"];
    println!(
        "BAT:                  {} entries, {} payload blocks, chunk ratio {}",
        b["entries"], b["payload_blocks"], b["chunk_ratio"]
    );
    for k in [
        "fully_present",
        "partially_present",
        "not_present",
        "zero",
        "unmapped",
        "undefined",
        "invalid",
        "sector_bitmap_blocks",
    ] {
        if b[k].as_u64().unwrap_or(0) > 0 {
            println!("  {:<22}{}", format!("{k}:"), b[k]);
        }
    }
    println!(
        "bytes allocated:      {}",
        human(b["bytes_allocated"].as_u64().unwrap_or(0))
    );
    if let Some(loc) = v["parent_locator"].as_array() {
        println!("parent locator:");
        for e in loc {
            println!(
                "  {:<22}{}",
                format!("{}:", e["key"].as_str().unwrap_or("")),
                e["value"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(c) = v["chain"].as_array() {
        if c.len() > 1 {
            println!("chain ({} layers, leaf first):", c.len());
            for (i, l) in c.iter().enumerate() {
                println!(
                    "  {i}: {} ({}, data write guid {})",
                    l["path"].as_str().unwrap_or(""),
                    l["type"].as_str().unwrap_or(""),
                    l["data_write_guid"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Some(e) = v["chain_error"].as_str() {
        println!("chain:                UNRESOLVED: {e}");
    }
    if let Some(p) = v["problems"].as_array() {
        for p in p {
            println!(
                "{}: {} at {:#x}: {}",
                p["severity"].as_str().unwrap_or(""),
                p["what"].as_str().unwrap_or(""),
                p["offset"].as_u64().unwrap_or(0),
                p["message"].as_str().unwrap_or("")
            );
        }
    }
}
