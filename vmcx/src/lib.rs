//! Read and write Hyper-V's HyperVStorage container, the format of `.vmcx`
//! (VM and checkpoint configuration), `.vmrs` (runtime and saved state) and
//! the host's `data.vmcx`: both file headers, the replay log (applied in
//! memory on read-only opens), chained object tables, key tables, typed
//! keys and file objects, every checksum verified. Layout notes:
//! `shared/research/vmcx-vmrs.md` §2.
//!
//! ```no_run
//! let store = vmcx::Store::open("vm.vmcx")?;
//! if let Some(vmcx::Value::String(name)) = store.tree().get("/configuration/properties/name") {
//!     println!("{name}");
//! }
//! # Ok::<(), vmcx::Error>(())
//! ```

pub mod edit;
pub mod error;
pub mod format;
pub mod json;
pub mod key_entry;
pub mod model;
pub mod replay_log;
pub mod source;
pub mod store;
pub mod tree;
pub mod writer;

pub use error::{Error, Result};
pub use format::KeyType;
pub use model::{CheckpointType, VmConfig};
pub use store::{OpenOptions, Problem, Store};
pub use tree::{Blob, Key, KeyId, Tree, Value};
pub use vhdx::{MemStorage, Storage};
