//! What the status page shows: the appliance's state, below everything that fills it.
//!
//! The bridges, the link and the page's own handlers write and read these types; they
//! live here, under all of them, so that none imports the module that starts the rest.

pub mod unit_facts;
pub mod updates;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use warden_bridges::{BridgeHealth, Sample, Value};
use warden_link::LinkStatus;

use crate::supervision::TaskHealthTable;
use unit_facts::UnitFacts;
use updates::UpdateDecision;

/// The last value of one point, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveValue {
    /// The value as read: in JSON a number, a text (a `string` point) or a flag; a
    /// number that is not finite is `null`.
    pub value: Value,
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
    /// The gateway facade's counters (`None`: no facade configured, or not heard of
    /// yet; the bridges send them every second).
    pub facade: Arc<Mutex<Option<warden_bridges::FacadeHealth>>>,
    /// Decimal places of the points whose config sets them, by `bridge/point`
    /// ([`crate::config::ApplianceBridges::point_decimals`]).
    pub point_decimals: Arc<BTreeMap<String, u8>>,
}

impl ApplianceState {
    /// Keeps each sample as its point's last value and, if numeric, in its trend
    /// history, in order (a burst: both locks are taken once for all of them).
    pub fn record_samples(&self, samples: impl IntoIterator<Item = Sample>) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        for sample in samples {
            // The trend charts numbers (a flag as 0 or 1); a text has no trend.
            let key = (sample.bridge, sample.point);
            if let Some(number) = sample.value.as_number().filter(|number| number.is_finite()) {
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
                    value: sample.value,
                    unit: sample.unit,
                    ts_ms: sample.timestamp_ms,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ApplianceState {
        ApplianceState {
            device_id: "wd-1".into(),
            bridges: Vec::new(),
            values: Default::default(),
            link: Default::default(),
            history: Default::default(),
            updates: Default::default(),
            unit: Default::default(),
            tasks: Default::default(),
            facade: Default::default(),
            point_decimals: Default::default(),
        }
    }

    fn record(state: &ApplianceState, point: &str, value: Value) {
        state.record_samples([Sample {
            bridge: "line1".into(),
            point: point.into(),
            value,
            unit: String::new(),
            timestamp_ms: 1_000,
        }]);
    }

    fn shown(state: &ApplianceState, point: &str) -> serde_json::Value {
        let values = state.values.lock().expect("values");
        let last = values
            .get(&("line1".to_owned(), point.to_owned()))
            .expect("recorded");
        serde_json::to_value(last).expect("json")["value"].clone()
    }

    #[test]
    fn each_kind_of_value_is_shown_as_read_and_only_numbers_have_a_trend() {
        let state = state();
        record(&state, "batch", Value::Text("AB-17".into()));
        record(&state, "oil", Value::Number(21.5));
        record(&state, "running", Value::Bool(true));
        record(&state, "broken", Value::Number(f64::NAN));
        assert_eq!(shown(&state, "batch"), serde_json::json!("AB-17"));
        assert_eq!(shown(&state, "oil"), serde_json::json!(21.5));
        assert_eq!(shown(&state, "running"), serde_json::json!(true));
        assert_eq!(shown(&state, "broken"), serde_json::Value::Null);
        let history = state.history.lock().expect("history");
        let trend = |point: &str| {
            history
                .get(&("line1".to_owned(), point.to_owned()))
                .map(|recent| recent.iter().copied().collect::<Vec<_>>())
        };
        assert_eq!(trend("oil"), Some(vec![21.5]));
        assert_eq!(trend("running"), Some(vec![1.0]));
        assert_eq!(trend("batch"), None);
        assert_eq!(trend("broken"), None);
    }
}
