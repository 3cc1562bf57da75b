//! Hyper-V saved states (`.vmrs` of a saved VM or a standard checkpoint)
//! without Windows: guest-physical memory from the `RamMemoryBlock%d`
//! descriptors and the `RamBlock%d` values (raw, or the compressed page
//! stream with XPRESS and LZNT1 pages), vCPU registers from the partition
//! state, and a writer of the same schema. Built on the `vmcx` container
//! crate; layouts in `shared/research/vmcx-vmrs.md` §4.
//!
//! ```no_run
//! let s = vmrs::SavedState::open("vm.vmrs")?;
//! if !s.has_memory() {
//!     println!("no saved memory (production checkpoint or powered-off VM)");
//! }
//! let mut page = [0u8; 4096];
//! s.read_gpa(0x1000, &mut page)?;
//! # Ok::<(), vmrs::Error>(())
//! ```

pub mod elf;
pub mod error;
pub mod extract;
pub mod lznt1;
pub mod memory_block;
pub mod partition_state;
pub mod ram_block;
pub mod registers_json;
pub mod saved_state;
pub mod writer;
pub mod xpress;

pub use error::{Error, Result};
pub use partition_state::{PartitionState, Segment, Table, VpRegisters};
pub use saved_state::{MemoryRange, SavedState, Schema};
pub use writer::{MemoryPiece, SavedStateSpec};
