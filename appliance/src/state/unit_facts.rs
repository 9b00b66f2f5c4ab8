//! The unit's own facts as the page shows them: image slots, failure reports and the
//! device certificate's validity.
//!
//! Read from disk by whoever may read them (`crate::status_page::unit_facts`) and, in
//! the split appliance, carried to the page in a frame: plain data, serialisable.

use serde::{Deserialize, Serialize};

/// The image slots and failure reports, as the page shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFacts {
    /// The A/B slots (`None`: this unit has no `[updates]` state directory).
    pub image_slots: Option<ImageSlots>,
    /// Failure reports, newest first (at most `status_page::unit_facts::MAX_REPORTS`); `None` without a
    /// `[reports]` ring.
    pub failure_reports: Option<FailureReports>,
    /// The device certificate's validity (`None`: this unit has no `[link]`).
    pub device_certificate: Option<CertificateView>,
}

/// The device certificate as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// Valid from (`YYYY-MM-DD hh:mm:ss UTC`).
    pub not_before: String,
    /// Valid until.
    pub not_after: String,
    /// Valid until, ms since the epoch.
    pub not_after_ms: i64,
    /// `valid`, `renewal-due` (less than a third of its validity left), `expired` or
    /// `not-valid-yet`.
    pub standing: String,
    /// Why the certificate could not be read (the rest is then empty).
    pub error: Option<String>,
    /// Whole days until `not_after` (0 once expired), as the page shows it.
    #[serde(default)]
    pub days_left: Option<i64>,
    /// Where renewal over the link stands, in words (`requested: …`), when something
    /// happened since the link started; from the link role, which renews.
    #[serde(default)]
    pub renewal: Option<String>,
}

/// The boot monitor's A/B state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSlots {
    /// The slot this image was booted from (`WARDEN_SLOT`), if the boot stage
    /// started it.
    pub running: Option<String>,
    /// The most recently confirmed slot.
    pub primary: Option<String>,
    /// Slot A, then slot B.
    pub slots: Vec<SlotView>,
    /// Why the state could not be read (the slots are then empty).
    pub error: Option<String>,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// `a` or `b`.
    pub slot: String,
    /// `empty`, `pending`, `trial`, `confirmed` or `failed`.
    pub status: String,
    /// The image's version (`1.4.0`), if the slot holds one.
    pub version: Option<String>,
    /// Trial boots and crashes, or why the slot was given up.
    pub detail: Option<String>,
}

/// The report ring as the page lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReports {
    /// Reports in the ring.
    pub total: usize,
    /// The newest ones.
    pub newest: Vec<ReportView>,
    /// Why the ring could not be read.
    pub error: Option<String>,
}

/// One failure report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportView {
    /// Its ID in the ring.
    pub id: u64,
    /// When, ms since the epoch.
    pub created_ms: u64,
    /// The compartment that failed.
    pub compartment: String,
    /// `panic`, `watchdog`, `policy-denied`, …
    pub kind: String,
    /// One line.
    pub message: String,
    /// The image version that ran.
    pub image_version: String,
    /// Its grouping signature.
    pub signature: String,
    /// A panic's backtrace (cut), else empty.
    pub detail: String,
    /// Queued for the fleet by the link.
    pub uploaded: bool,
}
