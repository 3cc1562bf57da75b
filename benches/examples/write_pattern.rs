//! The hvkit side of `benches/write_vs_qemu.sh`.
//!
//! ```text
//! write_pattern offsets seq TOTAL LEN             > pattern.txt
//! write_pattern offsets rand COUNT LEN SIZE SEED  > pattern.txt
//! write_pattern create-dynamic FILE SIZE [BLOCK]
//! write_pattern create-diff FILE PARENT [BLOCK]
//! write_pattern write FILE LEN PATTERN
//! write_pattern compare A B
//! ```
//!
//! `offsets` prints one `OFFSET FILL` line per write (FILL is the byte the
//! write is filled with, as qemu-io's `write -P FILL OFFSET LEN` does).
//! `write` opens FILE for writing, does the writes of PATTERN in order with
//! `Disk::write_at` and ends with `Disk::close` (flush and clean log), and
//! prints nothing. `compare` reads both images (VHDX or chains) through
//! `Disk` and prints `identical` or the first differing offset (exit 1).
//! Sizes take K/M/G suffixes.

use hvkit_benches::{fill_byte, random_offsets, sequential_offsets};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn size(s: &str) -> Res<u64> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(num.parse::<u64>()? * mul)
}

fn new_file(path: &str, params: &CreateParams) -> Res<()> {
    let file = std::fs::File::create_new(path)?;
    create(&file, path, params, &BTreeMap::new())?;
    file.sync_all()?;
    Ok(())
}

fn read_pattern(path: &str) -> Res<Vec<(u64, u8)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut f = line.split_whitespace();
        let bad = || format!("{path}:{}: expected `OFFSET FILL`", n + 1);
        let off = f.next().ok_or_else(bad)?.parse()?;
        let fill = f.next().ok_or_else(bad)?.parse()?;
        out.push((off, fill));
    }
    Ok(out)
}

fn run(args: &[String]) -> Res<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["offsets", "seq", total, len] => {
            for (i, off) in sequential_offsets(size(total)?, size(len)?)
                .into_iter()
                .enumerate()
            {
                println!("{off} {}", fill_byte(i));
            }
        }
        ["offsets", "rand", count, len, disk, seed] => {
            let offs = random_offsets(count.parse()?, size(len)?, size(disk)?, seed.parse()?);
            for (i, off) in offs.into_iter().enumerate() {
                println!("{off} {}", fill_byte(i));
            }
        }
        ["create-dynamic", file, disk, rest @ ..] => {
            let mut p = CreateParams::dynamic(size(disk)?);
            if let [block] = rest {
                p.block_size = size(block)?.try_into()?;
            }
            new_file(file, &p)?;
        }
        ["create-diff", file, parent, rest @ ..] => {
            let pd = Disk::open(parent, &ChainOptions::default())?;
            let guid = pd.leaf().header().data_write_guid;
            let link = ParentLink::for_parent(Path::new(file), Path::new(parent), guid);
            let mut p = CreateParams::differencing(pd.virtual_size(), link);
            p.logical_sector_size = pd.leaf().logical_sector_size();
            if let [block] = rest {
                p.block_size = size(block)?.try_into()?;
            }
            new_file(file, &p)?;
        }
        ["write", file, len, pattern] => {
            let len = size(len)? as usize;
            let pattern = read_pattern(pattern)?;
            let mut buf = vec![0u8; len];
            let mut disk = Disk::open_writable(file, &ChainOptions::default())?;
            for (off, fill) in pattern {
                buf.fill(fill);
                disk.write_at(&buf, off)?;
            }
            disk.close()?;
        }
        ["compare", a, b] => {
            let (a, b) = (
                Disk::open(a, &ChainOptions::default())?,
                Disk::open(b, &ChainOptions::default())?,
            );
            if a.virtual_size() != b.virtual_size() {
                return Err(format!(
                    "virtual sizes differ: {} and {}",
                    a.virtual_size(),
                    b.virtual_size()
                )
                .into());
            }
            const CHUNK: u64 = 4 << 20;
            let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
            let mut off = 0;
            while off < a.virtual_size() {
                let n = CHUNK.min(a.virtual_size() - off) as usize;
                a.read_at(&mut x[..n], off)?;
                b.read_at(&mut y[..n], off)?;
                if let Some(i) = (0..n).find(|&i| x[i] != y[i]) {
                    println!("differ at offset {}", off + i as u64);
                    return Err("images differ".into());
                }
                off += n as u64;
            }
            println!("identical");
        }
        _ => return Err("usage: see the top of benches/examples/write_pattern.rs".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_pattern: {e}");
            ExitCode::FAILURE
        }
    }
}
