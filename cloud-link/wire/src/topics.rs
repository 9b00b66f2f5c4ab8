//! MQTT topics and payloads between device and fleet, version 1: the one place for them.
//!
//! Every topic starts with `warden/v1/devices/{device_id}/`; a device may publish and
//! subscribe only under its own ID (the broker enforces this from its certificate).
//! Payloads are JSON objects with a `v` field carrying the payload version.
//!
//! | topic suffix | direction | payload |
//! |---|---|---|
//! | `telemetry` | device → fleet | [`TelemetryBatch`], QoS 1, from the durable outbox |
//! | `ack` | fleet → device | [`Ack`]: the batch `(stream, epoch, seq)` is stored |
//! | `commands` | fleet → device | [`Command`]: a write request with an ID |
//! | `command-results` | device → fleet | [`CommandResult`]: how it ended; a repeated ID gets the first result again |
//! | `twin/desired` | fleet → device | [`TwinDesired`]: a signed policy bundle to apply after verification |
//! | `twin/reported` | device → fleet | [`TwinReported`]: what actually runs, and why a desired state was refused |
//! | `attestation/challenge` | fleet → device | [`AttestationChallenge`]: a fresh nonce (≥ 32 bytes) |
//! | `attestation/quote` | device → fleet | [`AttestationQuote`]: pluton's signed quote over that nonce |
//! | `attestation/verdict` | fleet → device | [`AttestationVerdict`]: trusted or not, and why (shown on the status page) |
//! | `events` | device → fleet | [`DeviceEvent`]: something an operator should know |
//! | `reports` | device → fleet | [`FailureReportMessage`]: a failure report from the monitor |
//! | `updates/offer` | fleet → device | [`UpdateOffer`]: an image to install, with its window |
//! | `updates/status` | device → fleet | [`UpdateStatus`]: progress and outcome of an offer |
//! | `certificate/request` | device → fleet | [`crate::renewal::CertificateRequest`]: a CSR for the device's own key |
//! | `certificate/response` | fleet → device | [`crate::renewal::CertificateResponse`]: the renewed certificate, or why not |
//! | `certificate/renew` | fleet → device | [`crate::renewal::CertificateRenewOrder`]: renew the certificate now |
//! | `updates/revocation-list` | fleet → device | [`crate::revocation::RevocationListMessage`]: the newest vendor-signed release-key revocation list |
//!
//! A message leaves the device's outbox only when its [`Ack`] arrives; until then it
//! is sent again after reconnects and timeouts, and the fleet stores each
//! `(device, stream, epoch, seq)` once, so every reading arrives exactly once.
//!
//! ## Control messages (durable, acknowledged)
//!
//! Command results, reported state, events, failure reports and update status are
//! *control messages*: the device writes each one to its durable control queue (stream
//! [`CONTROL_STREAM`]) before publishing it, and publishes it again after reconnects
//! and restarts until the fleet acknowledges it. The published JSON object is the
//! payload type below plus one member, `delivery` ([`Delivery`]:
//! `{stream, epoch, seq}`). A peer that does not know `delivery` ignores it (no payload
//! type denies unknown members), so this is an additive change of version 1.
//!
//! The fleet, for every control message it receives:
//! 1. stores it once per `(device, delivery.stream, delivery.epoch, delivery.seq)`
//!    (and per natural ID: a command result's `id`, a failure report's `id`);
//! 2. then publishes [`Ack`] `{stream: "control", epoch, seq}` on the device's `ack`
//!    topic. Until then the device resends it (every 10 s, and after reconnects).
//!
//! For `twin/reported`, the newest state wins: keep the one with the highest
//! `(epoch, seq)` (a resend of an older state must not overwrite a newer one). The
//! device already drops superseded reported states from its queue.

pub use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the topic tree and of every payload in it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Prefix of every Warden topic.
pub const TOPIC_ROOT: &str = "warden/v1/devices";

/// Topic a device publishes telemetry on.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/telemetry")
}

/// Topic the fleet acknowledges a device's messages on.
pub fn ack_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/ack")
}

/// Topic the fleet sends commands to a device on.
pub fn commands_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/commands")
}

/// Topic a device answers commands on.
pub fn command_results_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/command-results")
}

/// Filter matching every device's command results (the fleet subscribes to it).
pub const ALL_COMMAND_RESULTS: &str = "warden/v1/devices/+/command-results";

/// Topic of the state the fleet wants a device in.
pub fn twin_desired_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/twin/desired")
}

/// Topic of the state a device reports.
pub fn twin_reported_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/twin/reported")
}

/// Filter matching every device's reported state.
pub const ALL_TWIN_REPORTED: &str = "warden/v1/devices/+/twin/reported";

/// Topic the fleet challenges a device's attestation on.
pub fn attestation_challenge_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/attestation/challenge")
}

/// Topic a device answers attestation challenges on.
pub fn attestation_quote_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/attestation/quote")
}

/// Topic the fleet tells a device what it concluded from its last quote on.
pub fn attestation_verdict_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/attestation/verdict")
}

/// Topic of a device's events.
pub fn events_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/events")
}

/// Topic of a device's failure reports.
pub fn reports_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/reports")
}

/// Topic the fleet offers updates to a device on.
pub fn update_offer_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/updates/offer")
}

/// Topic a device reports update progress on.
pub fn update_status_topic(device_id: &str) -> String {
    format!("{TOPIC_ROOT}/{device_id}/updates/status")
}

/// Filter matching every device's events.
pub const ALL_EVENTS: &str = "warden/v1/devices/+/events";

/// Filter matching every device's failure reports.
pub const ALL_REPORTS: &str = "warden/v1/devices/+/reports";

/// Filter matching every device's update status.
pub const ALL_UPDATE_STATUS: &str = "warden/v1/devices/+/updates/status";

/// The stream name of control messages (see the module docs).
pub const CONTROL_STREAM: &str = "control";

/// Where a control message sits in the device's durable control queue; the fleet
/// acknowledges it with [`Ack`] `{stream, epoch, seq}` once stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Stream name, [`CONTROL_STREAM`].
    pub stream: String,
    /// Identifies one run of the control queue's counter.
    pub epoch: u64,
    /// Sequence number within `(stream, epoch)`.
    pub seq: u64,
}

#[derive(Deserialize)]
struct DeliveryMember {
    #[serde(default)]
    delivery: Option<Delivery>,
}

impl Delivery {
    /// The `delivery` member of a control payload, if it has one.
    pub fn of_payload(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<DeliveryMember>(bytes)
            .ok()?
            .delivery
    }

    /// `payload` (a JSON object) with this reference added as its `delivery` member.
    pub fn attach<T: Serialize>(&self, payload: &T) -> Vec<u8> {
        let mut value = serde_json::to_value(payload).unwrap_or_default();
        if let serde_json::Value::Object(members) = &mut value {
            members.insert(
                "delivery".to_owned(),
                serde_json::to_value(self).unwrap_or_default(),
            );
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// The acknowledgement the fleet sends once it stored the message.
    pub fn ack(&self) -> Vec<u8> {
        Ack::encode(&self.stream, self.epoch, self.seq)
    }
}

/// Event kinds a device sends ([`DeviceEvent::kind`]).
pub mod event_kind {
    /// The link is up again after an outage (`detail` says how long and what waits).
    pub const LINK_RESTORED: &str = "link-restored";
    /// A verified policy bundle replaced the running policy.
    pub const POLICY_APPLIED: &str = "policy-applied";
    /// A policy bundle was refused; the running policy stays.
    pub const POLICY_REFUSED: &str = "policy-refused";
    /// A verified config change was applied.
    pub const CONFIG_APPLIED: &str = "config-applied";
    /// A config change was refused; nothing of it was applied.
    pub const CONFIG_REFUSED: &str = "config-refused";
    /// The telemetry outbox dropped or refused messages.
    pub const OUTBOX_OVERFLOW: &str = "outbox-overflow";
    /// The control queue dropped its oldest messages to make room.
    pub const CONTROL_OVERFLOW: &str = "control-overflow";
    /// An update offer changed state (`detail`: offer, version, state).
    pub const UPDATE_STATE: &str = "update-state";
    /// The unit connected with its renewed certificate and made it its own (`detail`:
    /// the new certificate's end of validity).
    pub const CERTIFICATE_RENEWED: &str = "certificate-renewed";
    /// Renewal failed: the fleet refused the request, or the new certificate did not
    /// connect and the unit went back to the old one (`detail` says which and why).
    pub const CERTIFICATE_RENEWAL_FAILED: &str = "certificate-renewal-failed";
    /// A release-key revocation list from the fleet verified against the unit's own
    /// vendor roots and is now held (`detail`: its sequence and how many keys it revokes).
    pub const REVOCATION_LIST_INSTALLED: &str = "revocation-list-installed";
    /// A release-key revocation list from the fleet was refused and nothing changed
    /// (`detail` says why: signature, unknown root, not newer than the held one…).
    pub const REVOCATION_LIST_REFUSED: &str = "revocation-list-refused";
}

/// The states of [`UpdateStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum UpdateState {
    /// Outside the window, deferred by the operator, or vetoed (`detail` says which).
    Waiting,
    /// Downloading (`detail`: bytes so far).
    Downloading,
    /// Checking the digest and the image signature.
    Verifying,
    /// Written to the inactive slot; boots on trial next.
    Installed,
    /// Running on trial.
    Trial,
    /// Confirmed after the trial.
    Confirmed,
    /// The trial failed and the previous image runs again.
    RolledBack,
    /// Failed (`detail` says what failed); nothing was installed.
    Failed,
}

impl UpdateState {
    /// The wire name (`rolled-back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Installed => "installed",
            Self::Trial => "trial",
            Self::Confirmed => "confirmed",
            Self::RolledBack => "rolled-back",
            Self::Failed => "failed",
        }
    }
}

impl DeviceEvent {
    /// An event of `kind` now.
    pub fn now(kind: &str, detail: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: kind.to_owned(),
            detail: detail.into(),
        }
    }
}

impl UpdateOffer {
    /// Decodes and version-checks an offer.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let offer: Self = serde_json::from_slice(bytes)?;
        if offer.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(offer.v));
        }
        if !valid_command_id(&offer.id) {
            return Err(PayloadError::BadId(offer.id));
        }
        Ok(offer)
    }
}

/// Shortest attestation nonce a device answers (bytes).
pub const MIN_NONCE_LEN: usize = 32;

/// The stream name of telemetry batches.
pub const TELEMETRY_STREAM: &str = "telemetry";

/// Filter matching every device's telemetry (the fleet subscribes to it).
pub const ALL_TELEMETRY: &str = "warden/v1/devices/+/telemetry";

/// The device ID a topic belongs to, if it is a Warden device topic.
pub fn device_of_topic(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
    let (device, _suffix) = rest.split_once('/')?;
    (!device.is_empty()).then_some(device)
}

/// One reading of one point.
///
/// Telemetry version 1 carries it as the JSON object
/// `{"point", "value", "text", "unit", "ts_ms"}`:
///
/// | value | `value` | `text` | `bool` |
/// |---|---|---|---|
/// | number | the number | `null` | absent |
/// | text | `null` | the text | absent |
/// | bool | `0` or `1` | `null` | `true` or `false` |
///
/// `bool` is an addition older readers ignore (no v1 payload denies unknown members):
/// they see the flag as the number 0 or 1, as before it had a type of its own. A
/// reader that knows `bool` takes it over `value`; a `text` wins over `value`; a
/// reading with none of the three is refused ([`PayloadError::NoValue`] in a batch).
///
/// Compact formats (postcard between compartments and in the outbox journal) get the
/// fields `point`, a number slot, `text: Option<String>`, `unit`, `ts_ms`. The number
/// slot is an enum whose variants `0` (none) and `1` (a number, `f64`) are byte for
/// byte the `Option<f64>` the journal held before readings had a type, and whose
/// variant `2` carries a bool: journals written before still read back; a build from
/// before reads a bool reading as damaged and skips it (after a rollback with bool
/// readings still pending).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Point name, `bridge/point`.
    pub point: String,
    /// What was read. A number that is not finite cannot travel in JSON (it would be
    /// written as `null` and refused): the appliance does not make readings of them.
    pub value: Value,
    /// Engineering unit.
    pub unit: String,
    /// When it was read, milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

impl Reading {
    /// A reading of `value`.
    pub fn new(point: String, value: Value, unit: String, ts_ms: u64) -> Self {
        Self {
            point,
            value,
            unit,
            ts_ms,
        }
    }

    /// A numeric reading.
    pub fn number(point: String, value: f64, unit: String, ts_ms: u64) -> Self {
        Self::new(point, Value::Number(value), unit, ts_ms)
    }

    /// The reading of a string point.
    pub fn text(point: String, text: String, unit: String, ts_ms: u64) -> Self {
        Self::new(point, Value::Text(text), unit, ts_ms)
    }
}

/// The version-1 JSON object, as read. Also used to explain a refused batch.
#[derive(Deserialize)]
struct ReadingV1 {
    point: String,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    bool: Option<bool>,
    #[serde(default)]
    unit: String,
    ts_ms: u64,
}

impl ReadingV1 {
    /// The reading's value: its `bool`, else its `text`, else its `value`.
    fn value(bool: Option<bool>, text: Option<String>, value: Option<f64>) -> Option<Value> {
        bool.map(Value::Bool)
            .or(text.map(Value::Text))
            .or(value.map(Value::Number))
    }

    fn has_value(&self) -> bool {
        self.bool.is_some() || self.text.is_some() || self.value.is_some()
    }
}

/// The number slot of the compact shape (see [`Reading`]).
const SLOT_VARIANTS: &[&str] = &["None", "Number", "Bool"];

impl Serialize for Reading {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        if serializer.is_human_readable() {
            let flag = self.value.as_bool();
            let fields = if flag.is_some() { 6 } else { 5 };
            let mut out = serializer.serialize_struct("Reading", fields)?;
            out.serialize_field("point", &self.point)?;
            // JSON has no NaN: a number that is not finite is written as `null`.
            let number = self.value.as_number().filter(|n| n.is_finite());
            out.serialize_field("value", &number)?;
            out.serialize_field("text", &self.value.as_text())?;
            if let Some(flag) = flag {
                out.serialize_field("bool", &flag)?;
            }
            out.serialize_field("unit", &self.unit)?;
            out.serialize_field("ts_ms", &self.ts_ms)?;
            return out.end();
        }
        let mut out = serializer.serialize_struct("Reading", 5)?;
        out.serialize_field("point", &self.point)?;
        out.serialize_field("value", &NumberSlot(&self.value))?;
        out.serialize_field("text", &self.value.as_text())?;
        out.serialize_field("unit", &self.unit)?;
        out.serialize_field("ts_ms", &self.ts_ms)?;
        out.end()
    }
}

/// Writes the number slot of a compact reading.
struct NumberSlot<'a>(&'a Value);

impl Serialize for NumberSlot<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(number) => {
                serializer.serialize_newtype_variant("Slot", 1, "Number", number)
            }
            Value::Bool(flag) => serializer.serialize_newtype_variant("Slot", 2, "Bool", flag),
            Value::Text(_) => serializer.serialize_unit_variant("Slot", 0, "None"),
        }
    }
}

/// Reads the number slot of a compact reading.
enum Slot {
    None,
    Number(f64),
    Bool(bool),
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlotVisitor;
        impl<'de> serde::de::Visitor<'de> for SlotVisitor {
            type Value = Slot;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a reading's number slot")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Slot, A::Error> {
                use serde::de::VariantAccess as _;
                let (index, variant) = data.variant::<u32>()?;
                match index {
                    0 => variant.unit_variant().map(|()| Slot::None),
                    1 => variant.newtype_variant().map(Slot::Number),
                    2 => variant.newtype_variant().map(Slot::Bool),
                    other => Err(serde::de::Error::invalid_value(
                        serde::de::Unexpected::Unsigned(u64::from(other)),
                        &"slot 0 (none), 1 (number) or 2 (bool)",
                    )),
                }
            }
        }
        deserializer.deserialize_enum("Slot", SLOT_VARIANTS, SlotVisitor)
    }
}

/// The compact shape, as read.
#[derive(Deserialize)]
struct CompactReading {
    point: String,
    value: Slot,
    text: Option<String>,
    unit: String,
    ts_ms: u64,
}

impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let neither = |point: &str| {
            serde::de::Error::custom(format_args!(
                "reading {point:?} has neither a number nor text"
            ))
        };
        if deserializer.is_human_readable() {
            let wire = ReadingV1::deserialize(deserializer)?;
            let Some(value) = ReadingV1::value(wire.bool, wire.text, wire.value) else {
                return Err(neither(&wire.point));
            };
            return Ok(Self::new(wire.point, value, wire.unit, wire.ts_ms));
        }
        let compact = CompactReading::deserialize(deserializer)?;
        let value = match compact.value {
            Slot::Bool(flag) => Value::Bool(flag),
            Slot::Number(number) if compact.text.is_none() => Value::Number(number),
            Slot::Number(_) | Slot::None => match compact.text {
                Some(text) => Value::Text(text),
                None => return Err(neither(&compact.point)),
            },
        };
        Ok(Self::new(compact.point, value, compact.unit, compact.ts_ms))
    }
}

/// A batch of readings, one message of the `telemetry` stream.
///
/// `(epoch, seq)` orders the batches of a stream; the fleet stores each
/// `(device, stream, epoch, seq)` once, so a resent batch is not counted twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Stream name, [`TELEMETRY_STREAM`].
    pub stream: String,
    /// Identifies one run of the sequence counter (set when the counter starts).
    pub epoch: u64,
    /// Sequence number of this batch within `(stream, epoch)`, from 0.
    pub seq: u64,
    /// The readings, oldest first.
    pub readings: Vec<Reading>,
}

/// The fleet's acknowledgement of one stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRef<'a> {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The stream of the acknowledged message.
    pub stream: &'a str,
    /// Its epoch.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// An owned [`AckRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The stream of the acknowledged message.
    pub stream: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl Ack {
    /// Encodes the acknowledgement as JSON.
    pub fn encode(stream: &str, epoch: u64, seq: u64) -> Vec<u8> {
        serde_json::to_vec(&AckRef {
            v: PROTOCOL_VERSION,
            stream,
            epoch,
            seq,
        })
        .unwrap_or_default()
    }

    /// Decodes and version-checks an acknowledgement.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let ack: Self = serde_json::from_slice(bytes)?;
        if ack.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(ack.v));
        }
        Ok(ack)
    }
}

/// A command from the fleet. Its `id` is unique per device: a device that sees an
/// ID again answers with the result it gave the first time and does nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Command ID (1 to 64 letters, digits, `-` or `_`).
    pub id: String,
    /// What to do.
    pub action: CommandAction,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommandAction {
    /// Write a value to a configured point, through the device's policy.
    Write {
        /// Bridge name.
        bridge: String,
        /// Point name.
        point: String,
        /// Value in engineering units.
        value: f64,
    },
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// The equipment confirmed the write.
    Written,
    /// The device's policy refused it; nothing reached the equipment.
    Denied,
    /// The equipment answered with a Modbus exception.
    Exception,
    /// The command named something the device does not have, or the write failed.
    Failed,
}

/// A device's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The command's ID.
    pub id: String,
    /// How it ended.
    pub status: CommandStatus,
    /// Details for people (the denial reason, the exception, the error).
    #[serde(default)]
    pub detail: String,
}

/// The state the fleet wants a device in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinDesired {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// A signed policy bundle, hex-encoded. The device applies it only after verifying
    /// it against the vendor roots in pluton, its product and its anti-rollback version.
    pub policy_bundle: Option<String>,
}

/// What a device actually runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TwinReported {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Name of the running policy (from its `[policy] name`), if it has one.
    pub policy_name: Option<String>,
    /// Version of the running policy bundle; `None` for a policy from the local file.
    pub policy_version: Option<u64>,
    /// Why the last desired state was refused, if it was.
    pub last_error: Option<String>,
    /// Version of the link settings that run (`None`: the unit's own config file).
    #[serde(default)]
    pub link_settings_version: Option<u64>,
    /// SHA-256 (hex) of the link settings that run, as [`LinkSettings::digest`].
    #[serde(default)]
    pub link_settings_sha256: Option<String>,
    /// Decimal places each numeric point is shown with, by reading point name
    /// (`bridge/point`), as the unit's config sets them (`decimals` of a point); points
    /// without the setting are absent. At most [`MAX_POINT_DECIMALS`] each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub point_decimals: BTreeMap<String, u8>,
    // Delta images (issue #27).
    /// SHA-256 (hex) of the whole image file the unit booted (its primary slot), so the
    /// fleet can offer a delta from it ([`UpdateOffer::delta`]); absent on a unit that
    /// takes no updates or has no installed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Sequence of the release-key revocation list the unit holds (verified against
    /// its own vendor roots; `crate::revocation`), so the fleet can send it a newer one
    /// and show where it stands; absent on a unit that takes no updates or holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_list_sequence: Option<u64>,
}

/// The most decimal places a point may be shown with (`decimals` of a point; more than
/// an `f64` reading carries meaningfully for a measured value).
pub const MAX_POINT_DECIMALS: u8 = 9;

/// Link settings the fleet may change through the twin: the `link` member of a
/// `twin/desired` object (read with [`LinkSettings::of_desired`]; a peer that does not
/// know it ignores it).
///
/// Not signed, but bounded: these settings only pace what the device sends (they can
/// neither widen what reaches equipment, which policy bundles govern and which are
/// signed, nor stop the link: every value outside the bounds is refused), they arrive
/// only over the mutually authenticated link from the pinned fleet, and a change whose
/// `version` is not above the running one is refused, so an old change is not replayed.
/// A change is applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// Increases with every change the fleet makes.
    pub version: u64,
    /// How long readings are gathered into one batch, ms ([`BATCH_INTERVAL_MS`]).
    pub batch_interval_ms: u64,
    /// Most messages sent per second, replay included ([`MAX_SEND_PER_SECOND`]).
    pub max_send_per_second: u32,
}

/// Accepted [`LinkSettings::batch_interval_ms`].
pub const BATCH_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;
/// Accepted [`LinkSettings::max_send_per_second`].
pub const MAX_SEND_PER_SECOND: std::ops::RangeInclusive<u32> = 10..=10_000;

/// Why link settings from the fleet were refused; each message names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkSettingsError {
    /// The desired-state payload is not JSON of its shape.
    #[error("desired state: {0}")]
    Desired(#[source] serde_json::Error),
    /// Its `link` member is not link settings.
    #[error("link settings: {0}")]
    Malformed(#[source] serde_json::Error),
    /// `batch_interval_ms` outside [`BATCH_INTERVAL_MS`].
    #[error(
        "link settings: batch_interval_ms {0} is outside {start}..={end}",
        start = BATCH_INTERVAL_MS.start(),
        end = BATCH_INTERVAL_MS.end()
    )]
    BatchInterval(u64),
    /// `max_send_per_second` outside [`MAX_SEND_PER_SECOND`].
    #[error(
        "link settings: max_send_per_second {0} is outside {start}..={end}",
        start = MAX_SEND_PER_SECOND.start(),
        end = MAX_SEND_PER_SECOND.end()
    )]
    MaxSendPerSecond(u32),
}

#[derive(Deserialize)]
struct LinkMember {
    #[serde(default)]
    link: Option<serde_json::Value>,
}

impl LinkSettings {
    /// The `link` member of a desired-state payload: `Ok(None)` without one, `Err` with
    /// the reason for a malformed one.
    pub fn of_desired(bytes: &[u8]) -> Result<Option<Self>, LinkSettingsError> {
        let member: LinkMember =
            serde_json::from_slice(bytes).map_err(LinkSettingsError::Desired)?;
        match member.link {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(LinkSettingsError::Malformed),
        }
    }

    /// Checks every field against its bounds; the error names the field.
    pub fn validate(&self) -> Result<(), LinkSettingsError> {
        if !BATCH_INTERVAL_MS.contains(&self.batch_interval_ms) {
            return Err(LinkSettingsError::BatchInterval(self.batch_interval_ms));
        }
        if !MAX_SEND_PER_SECOND.contains(&self.max_send_per_second) {
            return Err(LinkSettingsError::MaxSendPerSecond(
                self.max_send_per_second,
            ));
        }
        Ok(())
    }

    /// SHA-256 of the canonical JSON (fields in declaration order), hex.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        to_hex(&sha2::Sha256::digest(encode(self)))
    }
}

impl TwinDesired {
    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and version-checks.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let desired: Self = serde_json::from_slice(bytes)?;
        if desired.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(desired.v));
        }
        Ok(desired)
    }
}

impl TwinReported {
    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and version-checks.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let reported: Self = serde_json::from_slice(bytes)?;
        if reported.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(reported.v));
        }
        Ok(reported)
    }
}

/// A fresh attestation challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationChallenge {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The nonce, hex; at least [`MIN_NONCE_LEN`] bytes.
    pub nonce: String,
}

/// The fleet's verdict on a device's latest quote. For the unit's own status page: the
/// device acts on nothing in it (the fleet enforces its verdict itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationVerdict {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The quote verified and the measured image is acceptable: the fleet trusts it.
    pub trusted: bool,
    /// The known release the measured image is (its version), if it is one.
    pub release: Option<String>,
    /// What the fleet found, for people.
    pub detail: String,
}

/// A device's answer: pluton's quote (format `WPQ1`, see `warden_pluton::quote`),
/// verifiable with only the device's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationQuote {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The nonce answered, hex.
    pub nonce: String,
    /// The quote bytes, hex; empty when the device could not quote (see `error`).
    pub quote: String,
    /// Why no quote could be made.
    #[serde(default)]
    pub error: Option<String>,
}

/// Something an operator should know (link up after an outage, a policy applied…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// When, ms since the epoch.
    pub ts_ms: u64,
    /// Kind, a short identifier (`policy-applied`, `outbox-overflow`).
    pub kind: String,
    /// Details for people.
    pub detail: String,
}

/// A failure report as it travels (the monitor's record, flattened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReportMessage {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Report ID, unique per device.
    pub id: String,
    /// When, ms since the epoch.
    pub ts_ms: u64,
    /// The compartment that failed.
    pub compartment: String,
    /// Kind: `crash`, `panic`, `watchdog`, `sandbox-denial`, `policy-denials`, `attestation`.
    pub kind: String,
    /// Image version running.
    pub image_version: String,
    /// Grouping signature (compartment, kind, normalised message).
    pub signature: String,
    /// The message and details.
    pub message: String,
}

/// An update offered by the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Offer ID (the deployment wave's).
    pub id: String,
    /// Where the image is (content-addressed; supports HTTP range requests).
    pub url: String,
    /// SHA-256 of the image file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Semantic version of the image.
    pub version: String,
    /// Maintenance window: not before, ms since the epoch.
    pub window_start_ms: u64,
    /// Maintenance window: not after.
    pub window_end_ms: u64,
    /// A delta to the same image from the image the device runs (as its reported twin's
    /// [`TwinReported::image_sha256`] says; absent when the fleet has none for it). The device uses it only if its
    /// installed image is the delta's base, and falls back to `url` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<UpdateOfferDelta>,
}

/// A delta (`WDL1`, `warden image delta`) offered beside the full image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOfferDelta {
    /// Where the delta is (content-addressed; supports HTTP range requests).
    pub url: String,
    /// SHA-256 of the delta file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole image file it applies to, hex.
    pub base_sha256: String,
}

/// Progress or outcome of an update offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Payload version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The offer.
    pub id: String,
    /// `waiting` (window, deferral or veto), `downloading`, `verifying`, `installed`,
    /// `trial`, `confirmed`, `rolled-back`, `failed`.
    pub state: String,
    /// Details (bytes done, the reason for a wait or failure).
    #[serde(default)]
    pub detail: String,
    /// Where the image came from: absent for the fleet's offers,
    /// [`UPDATE_SOURCE_LOCAL`] for an image installed on the unit from a file (the
    /// status page's upload or `warden update install`; `id` is then `local-…`, no
    /// offer of the fleet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The image version, for a local install (the fleet knows its offers' versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// [`UpdateStatus::source`] of an image installed from a file on the unit.
pub const UPDATE_SOURCE_LOCAL: &str = "local";

/// Encodes any payload of this module as JSON.
pub fn encode<T: Serialize>(payload: &T) -> Vec<u8> {
    serde_json::to_vec(payload).unwrap_or_default()
}

/// Lowercase hex of `bytes` (how binary payload fields travel in JSON).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Bytes from hex; `None` if `text` is not an even number of hex digits (no sign, no
/// space: `u8::from_str_radix` would take "+f").
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// Whether `id` is acceptable as a command ID.
pub fn valid_command_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Command {
    /// Encodes the command as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a command (version and ID).
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let command: Self = serde_json::from_slice(bytes)?;
        if command.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(command.v));
        }
        if !valid_command_id(&command.id) {
            return Err(PayloadError::BadId(command.id));
        }
        Ok(command)
    }
}

impl CommandResult {
    /// Encodes the result as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a result.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let result: Self = serde_json::from_slice(bytes)?;
        if result.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(result.v));
        }
        if !valid_command_id(&result.id) {
            return Err(PayloadError::BadId(result.id));
        }
        Ok(result)
    }
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not valid JSON for the payload type.
    #[error("malformed payload: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A version this build does not speak.
    #[error("payload version {0} is not supported (expected {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    /// A command ID that is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("command id {0:?} is not 1 to 64 letters, digits, '-' or '_'")]
    BadId(String),
    /// A reading with no number, text or bool.
    #[error("reading {index} ({point:?}) has neither a number nor text")]
    NoValue {
        /// Its position in the batch.
        index: usize,
        /// Its point name.
        point: String,
    },
}

impl TelemetryBatch {
    /// Encodes the batch as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and version-checks a batch.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let batch: Self = serde_json::from_slice(bytes).map_err(|error| explain(bytes, error))?;
        if batch.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(batch.v));
        }
        Ok(batch)
    }
}

/// Why a batch that did not decode was refused: its version, or the first reading with
/// no value (read again loosely to name it; the well-formed path never comes here),
/// or `error` itself.
fn explain(bytes: &[u8], error: serde_json::Error) -> PayloadError {
    #[derive(Deserialize)]
    struct LooseBatch {
        v: u32,
        readings: Vec<ReadingV1>,
    }
    let Ok(loose) = serde_json::from_slice::<LooseBatch>(bytes) else {
        return PayloadError::Malformed(error);
    };
    if loose.v != PROTOCOL_VERSION {
        return PayloadError::UnsupportedVersion(loose.v);
    }
    match loose
        .readings
        .into_iter()
        .enumerate()
        .find(|(_, r)| !r.has_value())
    {
        Some((index, reading)) => PayloadError::NoValue {
            index,
            point: reading.point,
        },
        None => PayloadError::Malformed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_device() {
        let topic = telemetry_topic("wd-0011");
        assert_eq!(topic, "warden/v1/devices/wd-0011/telemetry");
        assert_eq!(device_of_topic(&topic), Some("wd-0011"));
        assert_eq!(device_of_topic("warden/v1/devices//telemetry"), None);
        assert_eq!(device_of_topic("other/v1/devices/x/telemetry"), None);
        assert_eq!(device_of_topic(&ack_topic("wd-0011")), Some("wd-0011"));
    }

    #[test]
    fn batches_round_trip_and_check_version() {
        let batch = TelemetryBatch {
            v: PROTOCOL_VERSION,
            stream: "line1".into(),
            epoch: 7,
            seq: 3,
            readings: vec![Reading::number("line1/t".into(), 21.5, "°C".into(), 1)],
        };
        assert_eq!(
            TelemetryBatch::decode(&batch.encode()).expect("decodes"),
            batch
        );
        let future = br#"{"v":2,"stream":"s","epoch":0,"seq":0,"readings":[]}"#;
        assert!(matches!(
            TelemetryBatch::decode(future),
            Err(PayloadError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            TelemetryBatch::decode(b"{"),
            Err(PayloadError::Malformed(_))
        ));
    }

    #[test]
    fn text_readings_travel_as_null_and_text() {
        let batch = TelemetryBatch {
            v: PROTOCOL_VERSION,
            stream: TELEMETRY_STREAM.into(),
            epoch: 1,
            seq: 1,
            readings: vec![
                Reading::text("line1/serial".into(), "AB-17".into(), String::new(), 5),
                Reading::number("line1/t".into(), 21.5, "°C".into(), 5),
            ],
        };
        let wire = batch.encode();
        let json: serde_json::Value = serde_json::from_slice(&wire).expect("json");
        assert_eq!(json["readings"][0]["value"], serde_json::Value::Null);
        assert_eq!(json["readings"][0]["text"], "AB-17");
        assert_eq!(json["readings"][1]["text"], serde_json::Value::Null);
        assert_eq!(json["readings"][1]["value"], 21.5);
        let back = TelemetryBatch::decode(&wire).expect("decodes");
        assert_eq!(back.readings[0].value.as_number(), None);
        assert_eq!(back.readings[0].value.as_text(), Some("AB-17"));
        assert_eq!(back.readings[1], batch.readings[1]);
        // A reading with no number and no text is refused whole, naming it.
        let empty = br#"{"v":1,"stream":"telemetry","epoch":0,"seq":0,"readings":[
            {"point":"a/ok","value":1,"ts_ms":0},{"point":"a/b","value":null,"ts_ms":0}]}"#;
        let error = TelemetryBatch::decode(empty).expect_err("refused");
        assert!(
            matches!(&error, PayloadError::NoValue { index: 1, point } if point == "a/b"),
            "{error}"
        );
    }

    /// Telemetry version 1, literally: what the device writes is what v1 readers
    /// parse, and what v1 writers wrote still reads.
    #[test]
    fn readings_keep_the_version_1_json_both_ways() {
        let number = r#"{"point":"line1/t","value":21.5,"text":null,"unit":"°C","ts_ms":5}"#;
        let text = r#"{"point":"line1/serial","value":null,"text":"AB-17","unit":"","ts_ms":5}"#;
        let flag =
            r#"{"point":"line1/run","value":1.0,"text":null,"bool":true,"unit":"","ts_ms":5}"#;
        let cases = [
            (
                number,
                Reading::number("line1/t".into(), 21.5, "°C".into(), 5),
            ),
            (
                text,
                Reading::text("line1/serial".into(), "AB-17".into(), String::new(), 5),
            ),
            (
                flag,
                Reading::new("line1/run".into(), Value::Bool(true), String::new(), 5),
            ),
        ];
        for (json, reading) in &cases {
            assert_eq!(serde_json::to_string(reading).expect("json"), *json);
            assert_eq!(
                &serde_json::from_str::<Reading>(json).expect("reads"),
                reading
            );
        }
        let batch = format!(
            r#"{{"v":1,"stream":"telemetry","epoch":2,"seq":3,"readings":[{number},{text},{flag}]}}"#
        );
        let decoded = TelemetryBatch::decode(batch.as_bytes()).expect("decodes");
        assert_eq!(String::from_utf8(decoded.encode()).expect("utf-8"), batch);
        // What v1 writers wrote: integers, absent `text` and `unit`.
        let old = r#"{"point":"a/n","value":3,"ts_ms":1}"#;
        assert_eq!(
            serde_json::from_str::<Reading>(old).expect("reads"),
            Reading::number("a/n".into(), 3.0, String::new(), 1)
        );
        // A v1 reader that does not know `bool` sees the flag as 0 or 1.
        let off = Reading::new("a/run".into(), Value::Bool(false), String::new(), 1);
        let json: serde_json::Value = serde_json::to_value(&off).expect("json");
        assert_eq!(
            (json["value"].as_f64(), json["bool"].as_bool()),
            (Some(0.0), Some(false))
        );
    }

    /// The compact shape between compartments and in the outbox journal: journals
    /// written before readings had a type read back the same.
    #[test]
    fn compact_readings_read_what_the_journal_held_before() {
        /// The shape the journal held before (NaN + optional text).
        #[derive(Serialize)]
        struct Before {
            point: String,
            value: Option<f64>,
            text: Option<String>,
            unit: String,
            ts_ms: u64,
        }
        let before = |value, text: Option<&str>| Before {
            point: "line1/x".into(),
            value,
            text: text.map(str::to_owned),
            unit: "bar".into(),
            ts_ms: 7,
        };
        let now = |value| Reading::new("line1/x".into(), value, "bar".into(), 7);
        for (old, new) in [
            (before(Some(2.5), None), now(Value::Number(2.5))),
            (
                before(None, Some("AB-17")),
                now(Value::Text("AB-17".into())),
            ),
        ] {
            let old_bytes = postcard::to_allocvec(&old).expect("postcard");
            assert_eq!(postcard::to_allocvec(&new).expect("postcard"), old_bytes);
            assert_eq!(
                postcard::from_bytes::<Reading>(&old_bytes).expect("reads"),
                new
            );
        }
        for value in [Value::Bool(true), Value::Number(f64::INFINITY)] {
            let reading = now(value);
            let bytes = postcard::to_allocvec(&reading).expect("postcard");
            assert_eq!(
                postcard::from_bytes::<Reading>(&bytes).expect("reads"),
                reading
            );
        }
        // Neither a number nor a text: refused, naming the point.
        let empty = postcard::to_allocvec(&before(None, None)).expect("postcard");
        let error = postcard::from_bytes::<Reading>(&empty).expect_err("refused");
        assert!(matches!(error, postcard::Error::SerdeDeCustom), "{error}");
    }
}
