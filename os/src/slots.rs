//! The A/B slot state machine (sans-IO): boot order, trial boot, confirm, rollback.
//!
//! Pure transitions on [`BootState`]; the monitor ([`crate::boot`]) persists the state
//! after each one and does the verification, measurement and file I/O around them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Magic of the persisted boot-state record.
pub const STATE_MAGIC: [u8; 4] = *b"WBS1";
/// Events kept in the state's log (oldest dropped first).
pub const MAX_EVENTS: usize = 32;
/// Longest failure message kept in a record.
pub const MAX_MESSAGE_LEN: usize = 160;

/// One of the two image slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"a"` or `"b"`, as used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the state remembers about the image in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// `major.minor.patch`.
    pub version: [u32; 3],
    /// The image's security counter.
    pub security_counter: u64,
    /// SHA-256 of the header (the boot measurement): the slot's file must match it.
    pub measurement: [u8; 32],
}

/// Why a slot was given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The image in the slot did not verify at boot; the message names the check.
    VerificationFailed(String),
    /// The trial image crashed this many times before it was confirmed.
    CrashedTooOften(u8),
    /// The trial image was booted this many times without being confirmed (the monitor
    /// or the machine died during each trial).
    UnconfirmedAfterBoots(u8),
    /// The health check did not pass within the trial's deadline.
    NotConfirmedInTime,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::VerificationFailed(message) => write!(f, "verification failed: {message}"),
            Self::CrashedTooOften(count) => write!(f, "crashed {count} times on trial"),
            Self::UnconfirmedAfterBoots(count) => {
                write!(f, "booted {count} times on trial without confirmation")
            }
            Self::NotConfirmedInTime => f.write_str("health check not passed before the deadline"),
        }
    }
}

/// The status of one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotStatus {
    /// Nothing bootable: never installed, or being overwritten by an install.
    Empty,
    /// Installed and verified; the next boot tries it on trial.
    Pending(ImageSummary),
    /// Booted on trial and not confirmed yet.
    Trial {
        /// The image.
        image: ImageSummary,
        /// Boots on trial so far.
        boots: u8,
        /// Crashes reported during the trial.
        crashes: u8,
    },
    /// Confirmed healthy; bootable as long as its counter is not below the device's.
    Confirmed(ImageSummary),
    /// Given up; never booted again until reinstalled.
    Failed {
        /// The image, if it was known.
        image: Option<ImageSummary>,
        /// Why.
        reason: FailureReason,
    },
}

impl SlotStatus {
    /// The image the slot holds, if any is recorded.
    pub fn image(&self) -> Option<&ImageSummary> {
        match self {
            Self::Empty => None,
            Self::Pending(image) | Self::Confirmed(image) | Self::Trial { image, .. } => {
                Some(image)
            }
            Self::Failed { image, .. } => image.as_ref(),
        }
    }
}

/// Something that happened, kept in the state's bounded log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootEventKind {
    /// An install into the slot started (the slot is no longer bootable).
    InstallStarted,
    /// An install finished; the slot is pending its trial.
    Installed,
    /// The slot booted (on trial or not).
    Booted {
        /// Whether on trial.
        trial: bool,
    },
    /// The trial slot was confirmed; the anti-rollback counter may be raised.
    Confirmed,
    /// A crash was reported.
    Crashed,
    /// The slot was given up (its trial rolled back, or it failed verification).
    GivenUp(FailureReason),
    /// The state record was unreadable and was rebuilt from the slots' images.
    StateRebuilt,
}

/// An entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootEvent {
    /// Sequence number (increases by one per event, across the device's life).
    pub sequence: u64,
    /// The slot concerned.
    pub slot: Slot,
    /// What happened.
    pub kind: BootEventKind,
}

/// Trial-boot limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialPolicy {
    /// K: crashes, or boots without confirmation, after which the trial rolls back.
    pub max_attempts: u8,
}

impl Default for TrialPolicy {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

/// A slot to try at boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCandidate {
    /// The slot.
    pub slot: Slot,
    /// The image the state expects in it.
    pub image: ImageSummary,
    /// Whether it would boot on trial.
    pub trial: bool,
}

/// What the monitor should do after a crash report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashVerdict {
    /// Restart the same slot.
    Restart,
    /// The trial failed: reboot, and boot selection falls back to the other slot.
    RolledBack(FailureReason),
}

/// A transition that the state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// Confirm was asked for a slot that is not on trial.
    #[error("slot {slot} is not on trial (it is {status}); nothing to confirm")]
    NotOnTrial {
        /// The slot.
        slot: Slot,
        /// Its status, in words.
        status: &'static str,
    },
    /// An install was asked for the running confirmed slot or a slot on trial.
    #[error("slot {slot} holds the {status} image; install into the other slot")]
    SlotInUse {
        /// The slot.
        slot: Slot,
        /// Its status, in words.
        status: &'static str,
    },
    /// `finish_install` without `begin_install`.
    #[error("slot {0} has no install in progress")]
    NoInstallInProgress(Slot),
}

/// The persisted A/B state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    slots: [SlotStatus; 2],
    /// The most recently confirmed slot.
    primary: Option<Slot>,
    next_sequence: u64,
    events: Vec<BootEvent>,
}

impl Default for BootState {
    fn default() -> Self {
        Self::new()
    }
}

fn status_name(status: &SlotStatus) -> &'static str {
    match status {
        SlotStatus::Empty => "empty",
        SlotStatus::Pending(_) => "pending",
        SlotStatus::Trial { .. } => "trial",
        SlotStatus::Confirmed(_) => "confirmed",
        SlotStatus::Failed { .. } => "failed",
    }
}

fn truncated(message: &str) -> String {
    let mut end = message.len().min(MAX_MESSAGE_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

impl BootState {
    /// A fresh device: both slots empty.
    pub fn new() -> Self {
        Self {
            slots: [SlotStatus::Empty, SlotStatus::Empty],
            primary: None,
            next_sequence: 0,
            events: Vec::new(),
        }
    }

    /// A state rebuilt from the images found valid in the slots (when the record is
    /// lost): each is taken as confirmed, the highest counter (then version) primary.
    pub fn rebuilt(found: &[(Slot, ImageSummary)]) -> Self {
        let mut state = Self::new();
        for (slot, image) in found {
            state.slots[slot.index()] = SlotStatus::Confirmed(*image);
            state.log(*slot, BootEventKind::StateRebuilt);
        }
        state.primary = found
            .iter()
            .max_by_key(|(slot, image)| (image.security_counter, image.version, *slot))
            .map(|(slot, _)| *slot);
        state
    }

    /// A slot's status.
    pub fn slot(&self, slot: Slot) -> &SlotStatus {
        &self.slots[slot.index()]
    }

    /// The most recently confirmed slot.
    pub fn primary(&self) -> Option<Slot> {
        self.primary
    }

    /// Whether booting again would run something other than `running` (the slot the
    /// current image runs from): an installed image waits for its trial, or `running`
    /// has been given up (its trial was rolled back). A restart asked for an update is
    /// honoured only then.
    pub fn restart_boots_something_else(&self, running: Option<Slot>) -> bool {
        Slot::ALL
            .into_iter()
            .any(|slot| matches!(self.slot(slot), SlotStatus::Pending(_)))
            || running.is_some_and(|slot| {
                matches!(
                    self.slot(slot),
                    SlotStatus::Failed { .. } | SlotStatus::Empty
                )
            })
    }

    /// The event log, oldest first.
    pub fn events(&self) -> &[BootEvent] {
        &self.events
    }

    fn set(&mut self, slot: Slot, status: SlotStatus) {
        self.slots[slot.index()] = status;
    }

    fn log(&mut self, slot: Slot, kind: BootEventKind) {
        self.events.push(BootEvent {
            sequence: self.next_sequence,
            slot,
            kind,
        });
        self.next_sequence += 1;
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    fn give_up(&mut self, slot: Slot, reason: FailureReason) {
        let image = self.slot(slot).image().copied();
        self.set(
            slot,
            SlotStatus::Failed {
                image,
                reason: reason.clone(),
            },
        );
        if self.primary == Some(slot) {
            self.primary = None;
        }
        self.log(slot, BootEventKind::GivenUp(reason));
    }

    /// Start a boot: give up trials that used their attempts, and list the slots to try
    /// in order (a pending or trial slot first, on trial; then the primary confirmed slot;
    /// then the other slot if it is confirmed too).
    pub fn plan_boot(&mut self, policy: &TrialPolicy) -> Vec<BootCandidate> {
        for slot in Slot::ALL {
            if let SlotStatus::Trial { boots, .. } = *self.slot(slot)
                && boots >= policy.max_attempts
            {
                self.give_up(slot, FailureReason::UnconfirmedAfterBoots(boots));
            }
        }
        let mut candidates = Vec::new();
        for slot in Slot::ALL {
            match self.slot(slot) {
                SlotStatus::Pending(image) | SlotStatus::Trial { image, .. } => {
                    candidates.push(BootCandidate {
                        slot,
                        image: *image,
                        trial: true,
                    });
                }
                _ => {}
            }
        }
        let mut confirmed: Vec<Slot> = Slot::ALL.to_vec();
        confirmed.sort_by_key(|slot| Some(*slot) != self.primary);
        for slot in confirmed {
            if let SlotStatus::Confirmed(image) = self.slot(slot) {
                candidates.push(BootCandidate {
                    slot,
                    image: *image,
                    trial: false,
                });
            }
        }
        candidates
    }

    /// A candidate did not verify (or its file did not match): give it up.
    pub fn candidate_failed(&mut self, slot: Slot, message: &str) {
        self.give_up(slot, FailureReason::VerificationFailed(truncated(message)));
    }

    /// A candidate verified and is about to run: count a trial boot.
    pub fn booting(&mut self, candidate: &BootCandidate) {
        if candidate.trial {
            let (boots, crashes) = match self.slot(candidate.slot) {
                SlotStatus::Trial { boots, crashes, .. } => (*boots, *crashes),
                _ => (0, 0),
            };
            self.set(
                candidate.slot,
                SlotStatus::Trial {
                    image: candidate.image,
                    boots: boots.saturating_add(1),
                    crashes,
                },
            );
        }
        self.log(
            candidate.slot,
            BootEventKind::Booted {
                trial: candidate.trial,
            },
        );
    }

    /// The trial slot passed its health check: confirm it and make it primary. Returns
    /// the security counter the device's anti-rollback counter must now be raised to
    /// (after this state is persisted, never before). Confirming a confirmed slot is a
    /// no-op that returns its counter again.
    pub fn confirm(&mut self, slot: Slot) -> Result<u64, SlotError> {
        match self.slot(slot).clone() {
            SlotStatus::Trial { image, .. } => {
                self.set(slot, SlotStatus::Confirmed(image));
                self.primary = Some(slot);
                self.log(slot, BootEventKind::Confirmed);
                Ok(image.security_counter)
            }
            SlotStatus::Confirmed(image) => Ok(image.security_counter),
            other => Err(SlotError::NotOnTrial {
                slot,
                status: status_name(&other),
            }),
        }
    }

    /// The image running from `slot` crashed.
    pub fn report_crash(&mut self, slot: Slot, policy: &TrialPolicy) -> CrashVerdict {
        self.log(slot, BootEventKind::Crashed);
        if let SlotStatus::Trial {
            image,
            boots,
            crashes,
        } = *self.slot(slot)
        {
            let crashes = crashes.saturating_add(1);
            if crashes >= policy.max_attempts {
                let reason = FailureReason::CrashedTooOften(crashes);
                self.give_up(slot, reason.clone());
                return CrashVerdict::RolledBack(reason);
            }
            self.set(
                slot,
                SlotStatus::Trial {
                    image,
                    boots,
                    crashes,
                },
            );
        }
        CrashVerdict::Restart
    }

    /// The trial's health check did not pass in time: give the slot up.
    pub fn trial_timed_out(&mut self, slot: Slot) -> Result<FailureReason, SlotError> {
        match self.slot(slot) {
            SlotStatus::Trial { .. } => {
                self.give_up(slot, FailureReason::NotConfirmedInTime);
                Ok(FailureReason::NotConfirmedInTime)
            }
            other => Err(SlotError::NotOnTrial {
                slot,
                status: status_name(other),
            }),
        }
    }

    /// The slot an update should be installed into: not the primary one.
    pub fn install_target(&self) -> Slot {
        match self.primary {
            Some(primary) => primary.other(),
            None => Slot::ALL
                .into_iter()
                .find(|slot| !matches!(self.slot(*slot), SlotStatus::Confirmed(_)))
                .unwrap_or(Slot::A),
        }
    }

    /// An install into `slot` starts: the slot stops being bootable *before* its file
    /// is replaced, so a crash mid-install never boots a half-written or unrecorded image.
    pub fn begin_install(&mut self, slot: Slot) -> Result<(), SlotError> {
        let status = self.slot(slot);
        let in_use = Some(slot) == self.primary || matches!(status, SlotStatus::Trial { .. });
        if in_use {
            return Err(SlotError::SlotInUse {
                slot,
                status: status_name(status),
            });
        }
        self.set(slot, SlotStatus::Empty);
        self.log(slot, BootEventKind::InstallStarted);
        Ok(())
    }

    /// The verified image is in place: the slot is pending its trial boot.
    pub fn finish_install(&mut self, slot: Slot, image: ImageSummary) -> Result<(), SlotError> {
        if *self.slot(slot) != SlotStatus::Empty {
            return Err(SlotError::NoInstallInProgress(slot));
        }
        self.set(slot, SlotStatus::Pending(image));
        self.log(slot, BootEventKind::Installed);
        Ok(())
    }

    /// The record's bytes: magic, postcard body, SHA-256 of the body.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain owned data into a Vec cannot fail.
        let body = postcard::to_allocvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + body.len() + 32);
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body));
        out
    }

    /// Decode a record; `None` if it is torn, corrupted or of another format.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.strip_prefix(&STATE_MAGIC)?;
        let (body, digest) = body.split_at_checked(body.len().checked_sub(32)?)?;
        if Sha256::digest(body).as_slice() != digest {
            return None;
        }
        postcard::from_bytes(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(counter: u64) -> ImageSummary {
        ImageSummary {
            version: [1, 0, counter as u32],
            security_counter: counter,
            measurement: [counter as u8; 32],
        }
    }

    fn installed(state: &mut BootState, slot: Slot, counter: u64) {
        state.begin_install(slot).expect("begin");
        state.finish_install(slot, image(counter)).expect("finish");
    }

    fn boot(state: &mut BootState, policy: &TrialPolicy) -> Option<BootCandidate> {
        let first = state.plan_boot(policy).into_iter().next()?;
        state.booting(&first);
        Some(first)
    }

    #[test]
    fn install_trial_confirm_then_update_the_other_slot() {
        let policy = TrialPolicy::default();
        let mut state = BootState::new();
        assert_eq!(state.install_target(), Slot::A);
        installed(&mut state, Slot::A, 1);
        let first = boot(&mut state, &policy).expect("candidate");
        assert_eq!((first.slot, first.trial), (Slot::A, true));
        assert_eq!(state.confirm(Slot::A), Ok(1));
        assert_eq!(state.primary(), Some(Slot::A));
        assert_eq!(state.install_target(), Slot::B);
        assert!(matches!(
            state.begin_install(Slot::A),
            Err(SlotError::SlotInUse { .. })
        ));
        installed(&mut state, Slot::B, 2);
        let plan = state.plan_boot(&policy);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].slot, plan[0].trial), (Slot::B, true));
        assert_eq!((plan[1].slot, plan[1].trial), (Slot::A, false));
        state.booting(&plan[0]);
        assert_eq!(state.confirm(Slot::B), Ok(2));
        assert_eq!(state.confirm(Slot::B), Ok(2), "idempotent");
        let next = boot(&mut state, &policy).expect("candidate");
        assert_eq!((next.slot, next.trial), (Slot::B, false));
    }

    #[test]
    fn k_crashes_roll_back_and_the_counter_is_not_raised() {
        let policy = TrialPolicy { max_attempts: 3 };
        let mut state = BootState::new();
        installed(&mut state, Slot::A, 1);
        boot(&mut state, &policy);
        state.confirm(Slot::A).expect("confirm");
        installed(&mut state, Slot::B, 2);
        boot(&mut state, &policy);
        assert_eq!(state.report_crash(Slot::B, &policy), CrashVerdict::Restart);
        assert_eq!(state.report_crash(Slot::B, &policy), CrashVerdict::Restart);
        assert_eq!(
            state.report_crash(Slot::B, &policy),
            CrashVerdict::RolledBack(FailureReason::CrashedTooOften(3))
        );
        let next = boot(&mut state, &policy).expect("candidate");
        assert_eq!((next.slot, next.trial), (Slot::A, false));
        assert!(matches!(
            state.confirm(Slot::B),
            Err(SlotError::NotOnTrial { .. })
        ));
        assert!(
            state.events().iter().any(
                |event| event.kind == BootEventKind::GivenUp(FailureReason::CrashedTooOften(3))
            )
        );
    }

    #[test]
    fn boots_without_confirmation_roll_back_after_k() {
        let policy = TrialPolicy { max_attempts: 2 };
        let mut state = BootState::new();
        installed(&mut state, Slot::A, 1);
        boot(&mut state, &policy);
        state.confirm(Slot::A).expect("confirm");
        installed(&mut state, Slot::B, 2);
        assert_eq!(boot(&mut state, &policy).map(|c| c.slot), Some(Slot::B));
        assert_eq!(boot(&mut state, &policy).map(|c| c.slot), Some(Slot::B));
        let third = boot(&mut state, &policy).expect("candidate");
        assert_eq!((third.slot, third.trial), (Slot::A, false));
        assert!(matches!(
            state.slot(Slot::B),
            SlotStatus::Failed {
                reason: FailureReason::UnconfirmedAfterBoots(2),
                ..
            }
        ));
    }

    #[test]
    fn timeout_and_verification_failure_give_up_the_slot() {
        let policy = TrialPolicy::default();
        let mut state = BootState::new();
        installed(&mut state, Slot::A, 1);
        boot(&mut state, &policy);
        state.confirm(Slot::A).expect("confirm");
        installed(&mut state, Slot::B, 2);
        boot(&mut state, &policy);
        assert_eq!(
            state.trial_timed_out(Slot::B),
            Ok(FailureReason::NotConfirmedInTime)
        );
        assert_eq!(boot(&mut state, &policy).map(|c| c.slot), Some(Slot::A));
        state.candidate_failed(Slot::A, "image header signature does not verify");
        assert!(state.plan_boot(&policy).is_empty());
        assert_eq!(state.primary(), None);
    }

    #[test]
    fn record_round_trips_and_rejects_corruption() {
        let mut state = BootState::new();
        installed(&mut state, Slot::A, 9);
        let bytes = state.encode();
        assert_eq!(BootState::decode(&bytes), Some(state.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(BootState::decode(&bytes[..cut]), None);
        }
        let mut flipped = bytes.clone();
        flipped[6] ^= 1;
        assert_eq!(BootState::decode(&flipped), None);
    }

    #[test]
    fn rebuilt_state_prefers_the_highest_counter() {
        let state = BootState::rebuilt(&[(Slot::A, image(3)), (Slot::B, image(2))]);
        assert_eq!(state.primary(), Some(Slot::A));
        assert_eq!(state.install_target(), Slot::B);
    }

    #[test]
    fn event_log_is_bounded() {
        let policy = TrialPolicy::default();
        let mut state = BootState::new();
        for _ in 0..100 {
            state.report_crash(Slot::A, &policy);
        }
        assert_eq!(state.events().len(), MAX_EVENTS);
        assert_eq!(state.events()[MAX_EVENTS - 1].sequence, 99);
    }
}
