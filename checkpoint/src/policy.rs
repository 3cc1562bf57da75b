//! The checkpoint types, in one place: what a checkpoint becomes, and when
//! it is refused, for each of Hyper-V's four types and each state of the
//! VM (seeds: "Production (falls back to standard), ProductionOnly (fails
//! instead)").
//!
//! | type           | VM off           | VM saved                 | VM running, guest quiesced | guest refuses or times out |
//! |----------------|------------------|--------------------------|----------------------------|----------------------------|
//! | Disabled       | refused          | refused                  | refused                    | refused                    |
//! | Production     | production, disks | standard, saved memory  | production, disks          | standard, memory           |
//! | ProductionOnly | production, disks | refused (nothing to quiesce) | production, disks      | refused, nothing changed   |
//! | Standard       | standard, disks  | standard, saved memory   | — (never asks)             | standard, memory           |
//!
//! A VM that is off has no memory, so every type gives a disk-only
//! checkpoint; it records the kind its type asks for. A saved VM has
//! memory and no guest to ask, so it is checkpointed with its saved state.

use crate::model::{Kind, VmState};
use vmcx::CheckpointType;

/// What to do before looking at the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Refused: the reason.
    Refuse(Refusal),
    /// A disk-only checkpoint of a VM that is off.
    Offline(Kind),
    /// A checkpoint of a saved VM with its saved memory.
    CopySavedState,
    /// A running VM: ask the guest first.
    Quiesce { fall_back: bool },
    /// A running VM: save memory and device state.
    SaveRunning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    /// ProductionOnly and the VM cannot be made consistent (why).
    ProductionImpossible(String),
}

/// The checkpoint type of a VM whose key is missing or unknown: Hyper-V's
/// default, Production.
pub fn effective(t: Option<CheckpointType>) -> CheckpointType {
    t.unwrap_or(CheckpointType::Production)
}

/// The plan for a checkpoint of a VM in `state` (`running`: a running VM
/// takes part).
pub fn plan(t: CheckpointType, state: VmState, running: bool) -> Plan {
    use CheckpointType::*;
    match (t, running, state) {
        (Disabled, _, _) => Plan::Refuse(Refusal::Disabled),
        (Production, true, _) => Plan::Quiesce { fall_back: true },
        (ProductionOnly, true, _) => Plan::Quiesce { fall_back: false },
        (Standard, true, _) => Plan::SaveRunning,
        (ProductionOnly, false, VmState::Saved) => Plan::Refuse(Refusal::ProductionImpossible(
            "the VM is in the saved state: there is no running guest to flush its writes, and its saved memory would make it a standard checkpoint".into(),
        )),
        (_, false, VmState::Saved) => Plan::CopySavedState,
        (Production | ProductionOnly, false, VmState::Off) => Plan::Offline(Kind::Production),
        (Standard, false, VmState::Off) => Plan::Offline(Kind::Standard),
    }
}

/// After a quiesce that was not acknowledged: fall back to standard, or
/// refuse.
pub fn after_failed_quiesce(fall_back: bool, why: String) -> Plan {
    if fall_back {
        Plan::SaveRunning
    } else {
        Plan::Refuse(Refusal::ProductionImpossible(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckpointType::*;

    #[test]
    fn table() {
        for s in [VmState::Off, VmState::Saved] {
            for r in [false, true] {
                assert_eq!(plan(Disabled, s, r), Plan::Refuse(Refusal::Disabled));
            }
        }
        assert_eq!(
            plan(Production, VmState::Off, false),
            Plan::Offline(Kind::Production)
        );
        assert_eq!(
            plan(ProductionOnly, VmState::Off, false),
            Plan::Offline(Kind::Production)
        );
        assert_eq!(
            plan(Standard, VmState::Off, false),
            Plan::Offline(Kind::Standard)
        );
        assert_eq!(
            plan(Production, VmState::Saved, false),
            Plan::CopySavedState
        );
        assert_eq!(plan(Standard, VmState::Saved, false), Plan::CopySavedState);
        assert!(matches!(
            plan(ProductionOnly, VmState::Saved, false),
            Plan::Refuse(Refusal::ProductionImpossible(_))
        ));
        assert_eq!(
            plan(Production, VmState::Off, true),
            Plan::Quiesce { fall_back: true }
        );
        assert_eq!(
            plan(ProductionOnly, VmState::Off, true),
            Plan::Quiesce { fall_back: false }
        );
        assert_eq!(plan(Standard, VmState::Off, true), Plan::SaveRunning);
        assert_eq!(after_failed_quiesce(true, "x".into()), Plan::SaveRunning);
        assert_eq!(
            after_failed_quiesce(false, "x".into()),
            Plan::Refuse(Refusal::ProductionImpossible("x".into()))
        );
        assert_eq!(effective(None), Production);
    }
}
