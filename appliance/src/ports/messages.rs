//! Every message the appliance's roles exchange, one enum per direction.
//!
//! Frames are the monitor's ([`warden_os::monitor::frame`]): a `u32` length and a
//! postcard body, at most [`MAX_FRAME_LEN`](warden_os::monitor::frame::MAX_FRAME_LEN).
//! Link payloads (commands, results, desired and reported twin states, events) travel
//! as their MQTT JSON, [`LinkPayload`]: that is their one definition (in `warden-link`),
//! and some of them are internally tagged, which postcard cannot carry. A payload that
//! does not decode is treated like a malformed frame: the channel closes and the monitor
//! gets a report.
//!
//! | channel (opened by → to) | direction | enum |
//! |---|---|---|
//! | bridges → link | bridges to link | [`BridgesToLink`]: readings, command results, reported state, events |
//! | | link to bridges | [`LinkToBridges`]: commands, desired states (policy bundles), results queued |
//! | bridges → status-page | bridges to page | [`BridgesToPage`]: inventory, counters, samples |
//! | | page to bridges | [`PageToBridges`]: nothing (an empty enum: any frame is refused) |
//! | link → status-page | link to page | [`LinkToPage`]: link status (with attestation answers), update offer and decision, image slots and failure reports |
//! | | page to link | [`PageToLink`]: the operator's update decision |

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warden_bridges::{BridgeHealth, Sample, Value};
use warden_link::LinkStatus;
use warden_link::topics::{
    Command, CommandResult, DeviceEvent, Reading, TwinDesired, TwinReported,
};

use crate::state::unit_facts::UnitFacts;
use crate::state::updates::UpdateDecision;

/// The compartment running the bridges (and policy): the only one with equipment grants.
pub const BRIDGES: &str = "bridges";
/// The compartment running the cloud link: the only one that may reach the fleet.
pub const LINK: &str = "link";
/// The compartment serving the status page: the only one listening.
pub const STATUS_PAGE: &str = "status-page";

/// A link payload as its JSON text (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPayload(pub String);

impl LinkPayload {
    /// The JSON of `payload`.
    pub fn of<T: Serialize>(payload: &T) -> Self {
        // Link payloads are plain structs of strings and numbers: they always encode.
        Self(serde_json::to_string(payload).unwrap_or_default())
    }

    /// The payload, or why it is refused.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        serde_json::from_str(&self.0).map_err(PayloadError)
    }
}

/// A link payload inside a frame is not the JSON of what it claims to be.
#[derive(Debug, thiserror::Error)]
#[error("payload does not decode: {0}")]
pub struct PayloadError(#[source] serde_json::Error);

/// A message a role accepts from a peer.
pub trait Incoming: DeserializeOwned + Send + 'static {
    /// Checks what the frame carries beyond its postcard shape (a link payload's
    /// JSON); an error closes the channel and is reported.
    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}

/// Bridges → link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BridgesToLink {
    /// Readings for telemetry, in the order they were read: what the bridges gathered
    /// in one burst (see [`Batches`]).
    Readings(Vec<Reading>),
    /// How a command ended (`CommandResult`).
    CommandResult(LinkPayload),
    /// The policy the bridges run (`TwinReported`).
    TwinReported(LinkPayload),
    /// Something an operator should know (`DeviceEvent`).
    Event(LinkPayload),
}

/// Link → bridges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkToBridges {
    /// A command from the fleet (`Command`), executed through the policy.
    Command(LinkPayload),
    /// A desired state from the fleet (`TwinDesired`), e.g. a signed policy bundle.
    TwinDesired(LinkPayload),
    /// The result of command `id` is in the link's durable control queue: the bridges
    /// note it in their command log and stop sending it again.
    ResultQueued(String),
}

/// One bridge as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// Bridge name.
    pub name: String,
    /// Device address, for people.
    pub address: String,
    /// Point names in config order.
    pub points: Vec<String>,
}

/// Bridges → status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BridgesToPage {
    /// The bridges, in config order (first frame of every channel).
    Inventory(Vec<BridgeInfo>),
    /// One bridge's counters.
    Health {
        /// The bridge.
        bridge: String,
        /// Its counters.
        health: BridgeHealth,
    },
    /// Points' new values, in the order they were read (one burst, see [`Batches`]).
    Samples(Vec<SampleFrame>),
    /// The gateway facade's counters (only when the config has a facade).
    Facade(warden_bridges::FacadeHealth),
}

/// Status page → bridges: nothing. The page may not ask the bridges for anything;
/// any frame it sends fails to decode, closes the channel and is reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageToBridges {}

/// Link → status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkToPage {
    /// The link's state and counters (boxed: the largest frame by far, sent once a
    /// second, while the others are small).
    Status(Box<LinkStatus>),
    /// The pending update offer and the operator's decision as the update path holds it.
    Updates(UpdateDecision),
    /// The image slots, the failure reports (the link reads the report ring and knows
    /// which it uploaded) and the device certificate, so the page needs no file grant
    /// for them (boxed: large, sent rarely).
    Unit(Box<UnitFacts>),
}

/// Status page → link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PageToLink {
    /// The operator deferred or allowed updates.
    Updates(UpdateDecision),
}

/// [`Sample`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleFrame {
    /// Bridge.
    pub bridge: String,
    /// Point.
    pub point: String,
    /// What was read.
    pub value: Value,
    /// Engineering unit.
    pub unit: String,
    /// When it was read, ms since the epoch.
    pub timestamp_ms: u64,
}

impl From<Sample> for SampleFrame {
    fn from(sample: Sample) -> Self {
        let Sample {
            bridge,
            point,
            value,
            unit,
            timestamp_ms,
        } = sample;
        Self {
            bridge,
            point,
            value,
            unit,
            timestamp_ms,
        }
    }
}

impl From<SampleFrame> for Sample {
    fn from(frame: SampleFrame) -> Self {
        Self {
            bridge: frame.bridge,
            point: frame.point,
            value: frame.value,
            unit: frame.unit,
            timestamp_ms: frame.timestamp_ms,
        }
    }
}

/// Most readings (or samples) in one frame.
pub const BATCH_LEN: usize = 128;
/// Most estimated bytes of one batch: half a monitor frame, so that what the estimate
/// leaves out (postcard's length prefixes and tags) never makes a frame too long.
const BATCH_BYTES: usize = warden_os::monitor::frame::MAX_FRAME_LEN / 2;

/// About how many bytes an item takes in a frame (its texts, and room for the rest).
pub trait FrameWeight {
    /// The estimate.
    fn frame_weight(&self) -> usize;
}

impl FrameWeight for Reading {
    fn frame_weight(&self) -> usize {
        self.point.len() + self.unit.len() + self.value.as_text().map_or(0, str::len) + 32
    }
}

impl FrameWeight for SampleFrame {
    fn frame_weight(&self) -> usize {
        self.bridge.len()
            + self.point.len()
            + self.unit.len()
            + self.value.as_text().map_or(0, str::len)
            + 32
    }
}

/// Readings or samples gathered for one frame each: a burst of them travels as one
/// message (one channel send, one wake-up of the peer, one frame between compartments)
/// instead of one per reading. A batch holds at most [`BATCH_LEN`] items and about
/// half a frame of bytes.
#[derive(Debug)]
pub struct Batches<T> {
    current: Vec<T>,
    bytes: usize,
}

impl<T: FrameWeight> Batches<T> {
    /// Nothing gathered yet.
    pub fn new() -> Self {
        Self {
            current: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds `item`; returns the batch to send first when `item` does not fit into it.
    pub fn push(&mut self, item: T) -> Option<Vec<T>> {
        let weight = item.frame_weight();
        let full = !self.current.is_empty()
            && (self.current.len() == BATCH_LEN || self.bytes + weight > BATCH_BYTES);
        let done = full.then(|| self.take()).flatten();
        self.bytes += weight;
        self.current.push(item);
        done
    }

    /// The batch gathered so far, if it holds anything.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.bytes = 0;
        (!self.current.is_empty()).then(|| std::mem::take(&mut self.current))
    }
}

impl<T: FrameWeight> Default for Batches<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl Incoming for BridgesToLink {
    fn check(&self) -> Result<(), PayloadError> {
        match self {
            Self::Readings(_) => Ok(()),
            Self::CommandResult(payload) => payload.decode::<CommandResult>().map(drop),
            Self::TwinReported(payload) => payload.decode::<TwinReported>().map(drop),
            Self::Event(payload) => payload.decode::<DeviceEvent>().map(drop),
        }
    }
}

impl Incoming for LinkToBridges {
    fn check(&self) -> Result<(), PayloadError> {
        match self {
            Self::Command(payload) => payload.decode::<Command>().map(drop),
            Self::TwinDesired(payload) => payload.decode::<TwinDesired>().map(drop),
            Self::ResultQueued(_) => Ok(()),
        }
    }
}

impl Incoming for BridgesToPage {}
impl Incoming for PageToBridges {}
impl Incoming for LinkToPage {}
impl Incoming for PageToLink {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_a_frame() {
        use warden_os::monitor::frame::{read_frame, write_frame};
        let health = BridgeHealth {
            connected: true,
            reads_ok: 7,
            last_error: Some("timeout".into()),
            ..BridgeHealth::default()
        };
        let to_page = BridgesToPage::Health {
            bridge: "line1".into(),
            health: health.clone(),
        };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &to_page).expect("write");
        let back: BridgesToPage = read_frame(&mut bytes.as_slice())
            .expect("read")
            .expect("frame");
        let BridgesToPage::Health { health: frame, .. } = back else {
            panic!("{back:?}");
        };
        assert_eq!(frame, health);
        let to_link = BridgesToLink::Readings(vec![Reading::number(
            "line1/t".into(),
            21.5,
            "°C".into(),
            9,
        )]);
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &to_link).expect("write");
        assert_eq!(
            read_frame::<BridgesToLink>(&mut bytes.as_slice()).expect("read"),
            Some(to_link)
        );
        // A string point's reading (a text value) crosses postcard too.
        let text = Reading::text("line1/serial".into(), "AB-17".into(), String::new(), 9);
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &BridgesToLink::Readings(vec![text])).expect("write");
        let Some(BridgesToLink::Readings(mut back)) =
            read_frame::<BridgesToLink>(&mut bytes.as_slice()).expect("read")
        else {
            panic!("not a reading");
        };
        let back = back.pop().expect("one reading");
        assert_eq!(back.value.as_number(), None);
        assert_eq!(back.value.as_text(), Some("AB-17"));
    }

    /// A burst is cut into batches of at most [`BATCH_LEN`] readings and half a frame
    /// of bytes, in order; each fits a frame even with long names and texts.
    #[test]
    fn batches_keep_order_and_fit_a_frame() {
        use warden_os::monitor::frame::write_frame;
        let reading = |n: u64, text: usize| {
            if text == 0 {
                Reading::number(format!("line1/p{n}"), 1.0, "bar".into(), n)
            } else {
                Reading::text("x".repeat(120), "y".repeat(text), "z".repeat(40), n)
            }
        };
        for text in [0, 250, 6000] {
            let mut batches = Batches::new();
            let mut sent = Vec::new();
            for n in 0..1000 {
                sent.extend(batches.push(reading(n, text)));
            }
            sent.extend(batches.take());
            assert!(batches.take().is_none(), "taken once");
            let order: Vec<u64> = sent.iter().flatten().map(|r| r.ts_ms).collect();
            assert_eq!(order, (0..1000).collect::<Vec<_>>());
            for batch in sent {
                assert!(!batch.is_empty() && batch.len() <= BATCH_LEN);
                if text == 0 {
                    assert!(batch.len() == BATCH_LEN || batch.len() == 1000 % BATCH_LEN);
                }
                let mut bytes = Vec::new();
                write_frame(&mut bytes, &BridgesToLink::Readings(batch)).expect("fits a frame");
            }
        }
    }

    #[test]
    fn the_page_cannot_say_anything_to_the_bridges() {
        for body in [[0_u8], [1], [0xff]] {
            let mut bytes = vec![1, 0, 0, 0];
            bytes.extend_from_slice(&body);
            assert!(
                warden_os::monitor::frame::read_frame::<PageToBridges>(&mut bytes.as_slice())
                    .is_err()
            );
        }
    }

    #[test]
    fn a_link_payload_that_is_not_its_json_is_refused() {
        let payload = LinkPayload("{\"v\":1,\"id\":".into());
        assert!(
            payload
                .decode::<warden_link::topics::Command>()
                .expect_err("a cut-off payload")
                .to_string()
                .contains("does not decode")
        );
    }
}
