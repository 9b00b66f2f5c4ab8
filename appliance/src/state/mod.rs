//! What the status page shows: the appliance's state, below everything that fills it.
//!
//! The bridges, the link and the page's own handlers write and read these types; they
//! live here, under all of them, so that none imports the module that starts the rest.

pub mod unit_facts;
pub mod updates;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use warden_bridges::{BridgeHealth, Sample};
use warden_link::LinkStatus;

use crate::supervision::TaskHealthTable;
use unit_facts::UnitFacts;
use updates::UpdateDecision;

/// The last value of one point, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveValue {
    /// Engineering value.
    pub value: f64,
    /// Engineering unit.
    pub unit: String,
    /// When it was read, ms since the epoch.
    pub ts_ms: u64,
}

/// One bridge as the status page shows it (of any kind; see [`crate::bridge_set`]).
#[derive(Debug, Clone)]
pub struct BridgeView {
    /// Bridge name.
    pub name: String,
    /// Device address.
    pub address: String,
    /// Point names in config order.
    pub points: Vec<String>,
    /// Counters, shared with the poller (or, in the status-page compartment, filled
    /// from the bridges compartment's frames).
    pub health: Arc<Mutex<BridgeHealth>>,
}

/// Recent values kept per point for the status page's trend charts.
pub const HISTORY_LENGTH: usize = 60;

/// The last [`HISTORY_LENGTH`] numeric values by `(bridge, point)`, oldest first.
pub type PointHistory = BTreeMap<(String, String), VecDeque<f64>>;

/// Everything the status page reads; written by the runtime.
#[derive(Debug, Clone)]
pub struct ApplianceState {
    /// This unit's ID.
    pub device_id: String,
    /// Bridges in config order.
    pub bridges: Vec<BridgeView>,
    /// Last values by `(bridge, point)`.
    pub values: Arc<Mutex<BTreeMap<(String, String), LiveValue>>>,
    /// The link's state and counters.
    pub link: Arc<Mutex<LinkStatus>>,
    /// The last [`HISTORY_LENGTH`] numeric values by `(bridge, point)`, oldest first.
    pub history: Arc<Mutex<PointHistory>>,
    /// The operator's decision about updates (read by the update agent).
    pub updates: Arc<Mutex<UpdateDecision>>,
    /// Image slots and failure reports, read from disk every few seconds.
    pub unit: Arc<Mutex<UnitFacts>>,
    /// Restarts and last failure of each restartable task of this process.
    pub tasks: TaskHealthTable,
}

impl ApplianceState {
    /// Keeps each sample as its point's last value and, if numeric, in its trend
    /// history, in order (a burst: both locks are taken once for all of them).
    pub fn record_samples(&self, samples: impl IntoIterator<Item = Sample>) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        for sample in samples {
            // The page shows numbers (a bool as 0 or 1); a text point's number is NaN.
            let number = sample.value.as_number().unwrap_or(f64::NAN);
            let key = (sample.bridge, sample.point);
            if number.is_finite() {
                // A point seen before (all but its first sample) costs no key copy.
                let recent = match history.get_mut(&key) {
                    Some(recent) => recent,
                    None => history.entry(key.clone()).or_default(),
                };
                if recent.len() == HISTORY_LENGTH {
                    recent.pop_front();
                }
                recent.push_back(number);
            }
            values.insert(
                key,
                LiveValue {
                    value: number,
                    unit: sample.unit,
                    ts_ms: sample.timestamp_ms,
                },
            );
        }
    }
}
