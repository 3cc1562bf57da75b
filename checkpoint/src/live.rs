//! The running-VM edge: what a hypervisor does for a checkpoint of a VM
//! that runs. This crate decides the order of the steps, the fallback and
//! the rollback (`create.rs`); an implementation only carries steps out.
//! The KVM harness (`vmm-harness`) implements it; this crate's tests use a
//! test VM.

use std::path::Path;
use std::time::Duration;

/// The guest's answer to a quiesce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quiesce {
    /// The guest flushed its cached writes to its disks and holds new ones
    /// until [`LiveVm::thaw`].
    Acknowledged,
    /// The guest said it cannot (no integration services, a failing VSS
    /// writer), with its reason.
    Refused(String),
    /// No answer within the timeout.
    TimedOut,
}

/// A VM that runs, as a checkpoint sees it. Every method is one step; an
/// error aborts the checkpoint and the orchestration undoes what was done.
pub trait LiveVm {
    /// Asks the guest to flush and freeze its filesystems (VSS in Windows,
    /// fsfreeze in Linux), waiting at most `timeout` for the answer.
    fn quiesce(&mut self, timeout: Duration) -> Result<Quiesce, String>;
    /// Lets a quiesced guest write again.
    fn thaw(&mut self) -> Result<(), String>;
    /// Stops the vCPUs at an instruction boundary.
    fn pause(&mut self) -> Result<(), String>;
    fn resume(&mut self) -> Result<(), String>;
    /// Writes every write the VM acknowledged through to its current disk
    /// files (a host-side flush, down to fsync).
    fn flush_disks(&mut self) -> Result<(), String>;
    /// Writes the paused VM's memory and device state as a `.vmrs` at
    /// `path` (through the vmrs writer), flushed. `path` is a new file.
    fn save_state(&mut self, path: &Path) -> Result<(), String>;
    /// From now on the VM's disk `index` (in the order of
    /// [`crate::VmFolder::disks`]) is the file `leaves[index]`: the VM
    /// closes its current leaves and opens these. Called with the old
    /// leaves to undo a switch.
    fn switch_disks(&mut self, leaves: &[&Path]) -> Result<(), String>;
}

/// How long a production checkpoint waits for the guest by default.
pub const DEFAULT_QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);
