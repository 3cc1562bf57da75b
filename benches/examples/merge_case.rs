//! Builds the merge benchmark's disks for `benches/compare.sh`.
//!
//! ```text
//! merge_case parent DIR            DIR/base.vhdx (4 GiB, 2 GiB of data)
//! merge_case child DIR LAYOUT      DIR/child.avhdx over DIR/base.vhdx
//! merge_case ranges LAYOUT         the child's written ranges, "OFFSET LENGTH" per line
//! merge_case bytes LAYOUT          the child's data bytes
//! ```
//! LAYOUT is full, half-partial or sparse.

use hvkit_benches::merge_case::{make_child, make_parent, Layout};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let layout = |s: &str| Layout::parse(s).unwrap_or_else(|| panic!("unknown layout {s}"));
    let r = match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["parent", dir] => make_parent(Path::new(dir)),
        ["child", dir, l] => make_child(Path::new(dir), layout(l)),
        ["ranges", l] => {
            for (o, n) in layout(l).ranges() {
                println!("{o} {n}");
            }
            Ok(())
        }
        ["bytes", l] => {
            println!("{}", layout(l).data_bytes());
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: merge_case parent DIR | child DIR LAYOUT | ranges LAYOUT | bytes LAYOUT"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("merge_case: {e}");
            ExitCode::FAILURE
        }
    }
}
