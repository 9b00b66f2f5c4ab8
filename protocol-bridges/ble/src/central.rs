//! The GATT central session: controller, scan, connect, discover, read, subscribe, write.
//!
//! Runs on the bridge's own thread. The outer loop (re)opens the HCI transport and
//! builds a fresh host stack; the inner loop finds the sensor, connects, serves the
//! connection until it drops, and waits (doubling, capped) before the next attempt.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bt_hci::controller::ExternalController;
use bt_hci::param::{LeAdvReportsIter, LeExtAdvReportsIter};
use embassy_futures::select::{Either, Either3, select, select3};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trouble_host::prelude::*;
use warden_bridges::bridge::WriteOutcome;
use warden_bridges::clock::unix_millis;
use warden_bridges::deadband::should_report;
use warden_bridges::request_policy::RequestSource;
use warden_bridges::sample::{Sample, Value};
use warden_policy::BleOperation;

use crate::ble_policy::{BleDenial, BleGatedRequest};
use crate::config::{BlePointSpec, SensorSelector};
use crate::device_address::DeviceAddress;
use crate::hci_transport::HciTransport;
use crate::point_config::BleAccess;
use crate::shared::{LinkState, Shared, WriteCommand};

/// The controller as the host stack drives it.
type Hci = ExternalController<HciTransport, 10>;
/// Services remembered by the GATT client.
const MAX_SERVICES: usize = 16;
/// Largest characteristic value read.
const MAX_VALUE_LEN: usize = 512;
/// How long opening the HCI transport may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the bridge until `shutdown`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<WriteCommand>,
    samples: mpsc::Sender<Sample>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(&shared);
    loop {
        shared.update(|h| h.state = LinkState::OpeningController);
        let transport = match shared.spec.transport.open(OPEN_TIMEOUT).await {
            Ok(transport) => transport,
            Err(error) => {
                let message = format!(
                    "cannot open HCI transport {}: {error}",
                    shared.spec.transport
                );
                tracing::warn!(bridge = %shared.spec.name, "{message}");
                shared.update(|h| h.last_error = Some(message));
                if !backoff.wait(&shared, &mut commands, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let controller: Hci = ExternalController::new(transport);
        let mut resources: HostResources<DefaultPacketPool, 1, 2> = HostResources::new();
        let stack = trouble_host::new(controller, &mut resources)
            .set_random_address(own_address(&shared.spec.name))
            .build();
        let mut runner = stack.runner();
        let scan = NameScan::new(&shared.spec.sensor);
        let session = Session {
            shared: &shared,
            stack: &stack,
            samples: &samples,
            scan: &scan,
        };
        let outcome = select3(
            runner.run_with_handler(&scan),
            session.run(&mut commands, &mut backoff),
            shutdown.cancelled(),
        )
        .await;
        match outcome {
            Either3::First(result) => {
                let message = format!("HCI transport {} failed: {result:?}", shared.spec.transport);
                tracing::warn!(bridge = %shared.spec.name, "{message}");
                shared.update(|h| {
                    if h.state == LinkState::Connected {
                        h.disconnections += 1;
                    }
                    h.last_error = Some(message);
                });
                if !backoff.wait(&shared, &mut commands, &shutdown).await {
                    return;
                }
            }
            Either3::Second(()) | Either3::Third(()) => return,
        }
    }
}

/// Our own static random address, derived from the bridge name so it is stable.
fn own_address(name: &str) -> Address {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut bytes = [0u8; 6];
    bytes.copy_from_slice(&hash.to_le_bytes()[..6]);
    bytes[5] |= 0xC0; // static random: the two most significant bits set
    Address::random(bytes)
}

/// Delays between attempts: doubling from the configured first delay to the cap;
/// reset after a connection that worked.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(shared: &Shared) -> Self {
        Self {
            first: shared.spec.reconnect_delay,
            max: shared.spec.max_reconnect_delay,
            next: shared.spec.reconnect_delay,
        }
    }

    fn reset(&mut self) {
        self.next = self.first;
    }

    /// Waits for the next attempt, refusing writes meanwhile; false on shutdown.
    async fn wait(
        &mut self,
        shared: &Shared,
        commands: &mut mpsc::Receiver<WriteCommand>,
        shutdown: &CancellationToken,
    ) -> bool {
        shared.update(|h| h.state = LinkState::Waiting);
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        let refuse = refuse_writes(shared, commands, "not connected to the sensor");
        match select3(tokio::time::sleep(delay), refuse, shutdown.cancelled()).await {
            Either3::First(()) => true,
            Either3::Second(()) | Either3::Third(()) => false,
        }
    }
}

/// Answers every write with `Failed` until the handle is dropped (then returns).
async fn refuse_writes(shared: &Shared, commands: &mut mpsc::Receiver<WriteCommand>, why: &str) {
    while let Some(command) = commands.recv().await {
        let error = format!("{}: {why}", shared.spec.name);
        // The caller may have given up; nothing to do then.
        let _ = command.reply.send(WriteOutcome::Failed { error });
    }
}

/// Finds the advertiser with the configured name in advertising reports.
struct NameScan {
    wanted: Option<String>,
    found: RefCell<Option<DeviceAddress>>,
}

impl NameScan {
    fn new(sensor: &SensorSelector) -> Self {
        Self {
            wanted: match sensor {
                SensorSelector::Name(name) => Some(name.clone()),
                SensorSelector::Address(_) => None,
            },
            found: RefCell::new(None),
        }
    }

    fn consider(&self, kind: AddrKind, addr: &BdAddr, data: &[u8]) {
        let Some(wanted) = &self.wanted else { return };
        if advertised_name(data).is_some_and(|name| name == wanted.as_bytes()) {
            self.found
                .borrow_mut()
                .get_or_insert(DeviceAddress::from_host(kind, addr));
        }
    }
}

impl EventHandler for NameScan {
    fn on_adv_reports(&self, mut reports: LeAdvReportsIter<'_>) {
        while let Some(Ok(report)) = reports.next() {
            self.consider(report.addr_kind, &report.addr, report.data);
        }
    }

    fn on_ext_adv_reports(&self, mut reports: LeExtAdvReportsIter<'_>) {
        while let Some(Ok(report)) = reports.next() {
            self.consider(report.addr_kind, &report.addr, report.data);
        }
    }
}

/// The complete (0x09) or shortened (0x08) local name in advertising data.
pub(crate) fn advertised_name(mut data: &[u8]) -> Option<&[u8]> {
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len);
        if len == 0 || rest.len() < len {
            return None;
        }
        let (structure, next) = rest.split_at(len);
        if matches!(structure[0], 0x08 | 0x09) {
            return Some(&structure[1..]);
        }
        data = next;
    }
    None
}

struct Session<'a, 'stack> {
    shared: &'a Shared,
    stack: &'a Stack<'stack, Hci, DefaultPacketPool>,
    samples: &'a mpsc::Sender<Sample>,
    scan: &'a NameScan,
}

impl Session<'_, '_> {
    /// Finds, connects and serves the sensor, again and again; returns when the handle
    /// is gone.
    async fn run(&self, commands: &mut mpsc::Receiver<WriteCommand>, backoff: &mut Backoff) {
        let mut central = self.stack.central();
        loop {
            let sensor = match &self.shared.spec.sensor {
                SensorSelector::Address(address) => *address,
                SensorSelector::Name(_) => match self.find_by_name(&mut central, commands).await {
                    Some(Ok(address)) => address,
                    Some(Err(error)) => {
                        self.shared
                            .update(|h| h.last_error = Some(error.to_string()));
                        if !self.pause(backoff, commands).await {
                            return;
                        }
                        continue;
                    }
                    None => return,
                },
            };
            self.shared.update(|h| {
                h.state = LinkState::Connecting;
                h.sensor = Some(sensor);
            });
            let target = [sensor.to_host()];
            let config = ConnectConfig {
                scan_config: ScanConfig {
                    filter_accept_list: &target,
                    ..Default::default()
                },
                connect_params: Default::default(),
            };
            // The connect is never abandoned half-way (some controllers keep a pending
            // connection after a cancel): writes are refused meanwhile.
            let connection = match select(
                central.connect(&config),
                refuse_writes(self.shared, commands, "not connected to the sensor"),
            )
            .await
            {
                Either::First(Ok(connection)) => connection,
                Either::First(Err(error)) => {
                    let message = format!("connecting to {sensor} failed: {error:?}");
                    self.shared.update(|h| h.last_error = Some(message));
                    if !self.pause(backoff, commands).await {
                        return;
                    }
                    continue;
                }
                Either::Second(()) => return,
            };
            tracing::info!(bridge = %self.shared.spec.name, %sensor, "connected");
            self.shared.update(|h| {
                h.state = LinkState::Connected;
                h.connections += 1;
            });
            backoff.reset();
            let ended = self.serve(&connection, sensor, commands).await;
            connection.disconnect();
            let stopped = matches!(ended, Ended::HandleDropped);
            tracing::info!(bridge = %self.shared.spec.name, %sensor, "disconnected: {ended:?}");
            self.shared.update(|h| {
                h.disconnections += 1;
                if let Ended::Error(message) = ended {
                    h.last_error = Some(message);
                }
            });
            if stopped || !self.pause(backoff, commands).await {
                return;
            }
        }
    }

    async fn pause(
        &self,
        backoff: &mut Backoff,
        commands: &mut mpsc::Receiver<WriteCommand>,
    ) -> bool {
        backoff
            .wait(self.shared, commands, &CancellationToken::new())
            .await
    }

    /// Scans until an advertiser with the configured name shows up.
    async fn find_by_name(
        &self,
        central: &mut Central<'_, Hci, DefaultPacketPool>,
        commands: &mut mpsc::Receiver<WriteCommand>,
    ) -> Option<Result<DeviceAddress, ScanFailed>> {
        self.shared.update(|h| h.state = LinkState::Scanning);
        self.scan.found.borrow_mut().take();
        let mut scanner = Scanner::new(central);
        let config = ScanConfig {
            active: true,
            interval: embassy_time::Duration::from_millis(100),
            window: embassy_time::Duration::from_millis(100),
            ..Default::default()
        };
        let session = match scanner.scan(&config).await {
            Ok(session) => session,
            Err(error) => {
                return Some(Err(ScanFailed {
                    detail: format!("{error:?}"),
                }));
            }
        };
        let found = async {
            loop {
                if let Some(address) = *self.scan.found.borrow() {
                    return address;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let result = select(
            found,
            refuse_writes(self.shared, commands, "the sensor has not been found yet"),
        )
        .await;
        session.stop().await;
        match result {
            Either::First(address) => Some(Ok(address)),
            Either::Second(()) => None,
        }
    }

    /// Serves one connection until it drops.
    async fn serve(
        &self,
        connection: &Connection<'_, DefaultPacketPool>,
        sensor: DeviceAddress,
        commands: &mut mpsc::Receiver<WriteCommand>,
    ) -> Ended {
        let client =
            match GattClient::<Hci, DefaultPacketPool, MAX_SERVICES>::new(self.stack, connection)
                .await
            {
                Ok(client) => client,
                Err(error) => return Ended::Error(format!("GATT client failed: {error:?}")),
            };
        let work = async {
            let points = self.discover(&client, sensor).await?;
            let mut readings = Readings::new(self.shared, self.samples);
            let mut listener = client
                .listen_all()
                .map_err(|e| Ended::Error(format!("cannot listen for notifications: {e:?}")))?;
            for point in points.iter().filter(|p| p.subscribed) {
                let Some(cccd) = point.characteristic.cccd_handle else {
                    continue;
                };
                let bits: u16 = if point.spec.access == BleAccess::Indicate {
                    2
                } else {
                    1
                };
                client
                    .write_handle(cccd, &bits.to_le_bytes())
                    .await
                    .map_err(|e| {
                        Ended::Error(format!("subscribing to {} failed: {e:?}", point.spec.name))
                    })?;
            }
            let mut due: Vec<Instant> = vec![Instant::now(); points.len()];
            loop {
                let now = Instant::now();
                let next_read = points
                    .iter()
                    .zip(&due)
                    .filter(|(p, _)| p.readable)
                    .map(|(_, at)| *at)
                    .min();
                let timer = async {
                    match next_read {
                        Some(at) => tokio::time::sleep_until(at.max(now).into()).await,
                        None => std::future::pending().await,
                    }
                };
                match select3(listener.next(), timer, commands.recv()).await {
                    Either3::First(notification) => {
                        self.shared.update(|h| h.notifications += 1);
                        let handle = notification.handle();
                        // Indications are confirmed by the host stack itself
                        // (trouble-host answers every ATT_HANDLE_VALUE_IND).
                        for point in points.iter().filter(|p| p.characteristic.handle == handle) {
                            readings.publish(&point.spec, notification.as_ref()).await;
                        }
                    }
                    Either3::Second(()) => {
                        let now = Instant::now();
                        let mut buffer = [0u8; MAX_VALUE_LEN];
                        for (point, at) in points.iter().zip(due.iter_mut()) {
                            if !point.readable || *at > now {
                                continue;
                            }
                            let len = client
                                .read_characteristic(&point.characteristic, &mut buffer)
                                .await
                                .map_err(|e| {
                                    Ended::Error(format!(
                                        "reading {} failed: {e:?}",
                                        point.spec.name
                                    ))
                                })?;
                            self.shared.update(|h| h.reads += 1);
                            readings
                                .publish(&point.spec, &buffer[..len.min(MAX_VALUE_LEN)])
                                .await;
                            // Notified points are read once; read points on their period.
                            *at = if point.spec.access == BleAccess::Read {
                                now + point.spec.poll_interval
                            } else {
                                now + Duration::from_secs(365 * 24 * 3600)
                            };
                        }
                    }
                    Either3::Third(Some(command)) => {
                        let outcome = self.write(&client, &points, sensor, &command).await;
                        // The caller may have given up; nothing to do then.
                        let _ = command.reply.send(outcome);
                    }
                    Either3::Third(None) => break Err::<(), Ended>(Ended::HandleDropped),
                }
            }
        };
        let served: Result<(), Ended> = match select(client.task(), work).await {
            Either::First(result) => Err(match result {
                Ok(()) => Ended::Disconnected,
                Err(BleHostError::BleHost(trouble_host::Error::Disconnected)) => {
                    Ended::Disconnected
                }
                Err(error) => Ended::Error(format!("GATT client stopped: {error:?}")),
            }),
            Either::Second(result) => result,
        };
        served.err().unwrap_or(Ended::Disconnected)
    }

    /// Finds the points' characteristics and asks the policy for their reads and
    /// subscriptions; points the sensor lacks or the policy refuses are left out.
    async fn discover(
        &self,
        client: &GattClient<'_, Hci, DefaultPacketPool, MAX_SERVICES>,
        sensor: DeviceAddress,
    ) -> Result<Vec<FoundPoint>, Ended> {
        let mut services = BTreeMap::new();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for spec in &self.shared.spec.points {
            if let std::collections::btree_map::Entry::Vacant(entry) = services.entry(spec.service)
            {
                let handles = client
                    .services_by_uuid(&spec.service.to_host())
                    .await
                    .map_err(|e| Ended::Error(format!("service discovery failed: {e:?}")))?;
                entry.insert(handles.first().cloned());
            }
            let Some(Some(service)) = services.get(&spec.service) else {
                missing.push(format!("{} (service {})", spec.name, spec.service));
                continue;
            };
            let characteristic: Characteristic<[u8]> = match client
                .characteristic_by_uuid(service, &spec.characteristic.to_host())
                .await
            {
                Ok(characteristic) => characteristic,
                Err(_) => {
                    missing.push(format!(
                        "{} (characteristic {})",
                        spec.name, spec.characteristic
                    ));
                    continue;
                }
            };
            let operation = match spec.access {
                BleAccess::Read => Some(BleOperation::Read),
                BleAccess::Notify => Some(BleOperation::Notify),
                BleAccess::Indicate => Some(BleOperation::Indicate),
                BleAccess::None => None,
            };
            let allowed = |operation| {
                self.allowed(spec, sensor, operation, RequestSource::Poll)
                    .is_ok()
            };
            let subscribed = matches!(
                operation,
                Some(BleOperation::Notify | BleOperation::Indicate)
            ) && operation.is_some_and(allowed)
                && characteristic.cccd_handle.is_some();
            let readable = operation.is_some() && allowed(BleOperation::Read);
            found.push(FoundPoint {
                spec: spec.clone(),
                characteristic,
                readable,
                subscribed,
            });
        }
        if !missing.is_empty() {
            tracing::warn!(bridge = %self.shared.spec.name, ?missing, "points not found on the sensor");
        }
        self.shared.update(|h| h.missing_points = missing);
        Ok(found)
    }

    fn allowed(
        &self,
        spec: &BlePointSpec,
        sensor: DeviceAddress,
        operation: BleOperation,
        source: RequestSource,
    ) -> Result<(), BleDenial> {
        let request = BleGatedRequest {
            bridge: &self.shared.spec.name,
            device: sensor,
            service: spec.service,
            characteristic: spec.characteristic,
            operation,
            source,
        };
        let verdict = self
            .shared
            .policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(&request);
        verdict.map_err(|denial| {
            tracing::warn!(bridge = %self.shared.spec.name, point = %spec.name, "{denial}");
            self.shared.update(|h| h.denied += 1);
            denial
        })
    }

    async fn write(
        &self,
        client: &GattClient<'_, Hci, DefaultPacketPool, MAX_SERVICES>,
        points: &[FoundPoint],
        sensor: DeviceAddress,
        command: &WriteCommand,
    ) -> WriteOutcome {
        if Instant::now() > command.deadline {
            return WriteOutcome::Failed {
                error: "the write waited too long and was dropped unsent".into(),
            };
        }
        let Some(point) = points.iter().find(|p| p.spec.name == command.point) else {
            return WriteOutcome::Failed {
                error: format!("point {} is not available on the sensor", command.point),
            };
        };
        if let Err(denial) = self.allowed(&point.spec, sensor, BleOperation::Write, command.source)
        {
            return WriteOutcome::Denied {
                reason: denial.reason,
            };
        }
        let bytes = match point.spec.codec.encode(&command.value) {
            Ok(bytes) => bytes,
            Err(error) => {
                return WriteOutcome::Failed {
                    error: error.to_string(),
                };
            }
        };
        match client
            .write_characteristic(&point.characteristic, &bytes)
            .await
        {
            Ok(()) => {
                self.shared.update(|h| h.writes += 1);
                WriteOutcome::Written
            }
            Err(BleHostError::BleHost(trouble_host::Error::Att(code))) => WriteOutcome::Failed {
                error: format!("the sensor refused the write of {}: {code}", command.point),
            },
            Err(error) => WriteOutcome::Failed {
                error: format!("writing {} failed: {error:?}", command.point),
            },
        }
    }
}

/// A configured point found on the connected sensor.
struct FoundPoint {
    spec: BlePointSpec,
    characteristic: Characteristic<[u8]>,
    /// Read after connecting (and periodically for `read` points).
    readable: bool,
    /// Notifications or indications enabled.
    subscribed: bool,
}

/// Why looking for the sensor by its advertised name failed (the controller
/// refused to scan); kept as the bridge's last error until the next attempt.
#[derive(Debug, thiserror::Error)]
#[error("scanning failed: {detail}")]
struct ScanFailed {
    /// The host stack's error, as it renders it (its type is generic over the
    /// controller and has no `Display`).
    detail: String,
}

/// Why serving a connection ended.
#[derive(Debug)]
enum Ended {
    /// The link dropped.
    Disconnected,
    /// A GATT operation failed.
    Error(String),
    /// The bridge handle is gone: stop.
    HandleDropped,
}

/// Decodes values into samples, with per-point deadbands.
struct Readings<'a> {
    shared: &'a Shared,
    samples: &'a mpsc::Sender<Sample>,
    last: BTreeMap<String, Value>,
}

impl<'a> Readings<'a> {
    fn new(shared: &'a Shared, samples: &'a mpsc::Sender<Sample>) -> Self {
        Self {
            shared,
            samples,
            last: BTreeMap::new(),
        }
    }

    async fn publish(&mut self, spec: &BlePointSpec, bytes: &[u8]) {
        let value = match spec.codec.decode(bytes) {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(bridge = %self.shared.spec.name, "{error}");
                self.shared.update(|h| {
                    h.decode_errors += 1;
                    h.last_error = Some(error.to_string());
                });
                return;
            }
        };
        if !should_report(self.last.get(&spec.name), &value, spec.deadband) {
            return;
        }
        self.last.insert(spec.name.clone(), value.clone());
        let sample = Sample {
            bridge: self.shared.spec.name.clone(),
            point: spec.name.clone(),
            value,
            unit: spec.unit.clone(),
            timestamp_ms: unix_millis(),
        };
        // The receiver is gone only when the appliance is stopping.
        let _ = self.samples.send(sample).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_names_are_found_and_malformed_data_is_ignored() {
        let data = [2, 0x01, 0x06, 5, 0x09, b'a', b'b', b'c', b'd'];
        assert_eq!(advertised_name(&data), Some(&b"abcd"[..]));
        let short = [2, 0x01, 0x06, 3, 0x08, b'a', b'b'];
        assert_eq!(advertised_name(&short), Some(&b"ab"[..]));
        assert_eq!(advertised_name(&[2, 0x01, 0x06]), None);
        assert_eq!(advertised_name(&[9, 0x09, b'a']), None);
        assert_eq!(advertised_name(&[0, 0x09]), None);
    }

    #[test]
    fn own_address_is_static_random_and_stable() {
        let a = own_address("greenhouse");
        assert_eq!(a, own_address("greenhouse"));
        assert_ne!(a, own_address("barn"));
        assert_eq!(a.addr.raw()[5] & 0xC0, 0xC0);
    }
}
