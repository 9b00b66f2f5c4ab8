//! The mailbox task: frames from the application core in, outcomes out. Every
//! request is checked against the policy here, before it can reach the bus.

use embassy_futures::select::{Either, select};
use embassy_time::Instant;
use warden_modbus::pdu::Request;
use warden_rtcore_mailbox::framing::decode_message;
use warden_rtcore_mailbox::message::ConfigureRefusal;
use warden_rtcore_mailbox::{
    FrameDecoder, FromCore, LineSettings, MAX_FRAME_LEN, Outcome, PROTOCOL_VERSION, ToCore,
    encode_frame,
};

use crate::bus::{self, BusCommand, BusOutcome, Job};
use crate::cmsdk_uart::Uart;
use crate::core_policy::CorePolicy;
use crate::counters;

/// Bytes the mailbox UART can queue between two reads of the task.
pub const MAILBOX_RX_QUEUE: usize = 512;

/// The line as configured, and the bridge name the policy knows it by.
struct Configured {
    line: LineSettings,
    bridge: heapless::String<32>,
}

struct Mailbox {
    uart: &'static Uart<MAILBOX_RX_QUEUE>,
    policy: CorePolicy,
    configured: Option<Configured>,
}

/// Serves the mailbox until the end of time.
pub async fn run(uart: &'static Uart<MAILBOX_RX_QUEUE>) -> ! {
    let mut mailbox = Mailbox {
        uart,
        policy: CorePolicy::new(),
        configured: None,
    };
    mailbox.policy.install_trust();
    let mut decoder = FrameDecoder::new();
    // A leading delimiter ends whatever the other side's decoder held.
    uart.write_all(&[0]).await;
    mailbox.send(&mailbox.ready()).await;
    loop {
        match select(uart.read(), bus::RESULTS.receive()).await {
            Either::First(received) => match decoder.push(received.byte) {
                Ok(Some(payload)) => match decode_message::<ToCore<'_>>(payload) {
                    Ok(message) => mailbox.handle(message).await,
                    Err(_) => mailbox.garbled().await,
                },
                Ok(None) => {}
                Err(error) => {
                    defmt::warn!("mailbox frame dropped: {}", error);
                    mailbox.garbled().await;
                }
            },
            Either::Second((id, outcome)) => {
                let outcome = match &outcome {
                    BusOutcome::Response(pdu) => Outcome::Response { pdu },
                    BusOutcome::BroadcastSent => Outcome::BroadcastSent,
                    BusOutcome::Timeout => Outcome::Timeout,
                    BusOutcome::Corrupted => Outcome::Corrupted,
                };
                mailbox.send(&FromCore::Outcome { id, outcome }).await;
            }
        }
    }
}

impl Mailbox {
    fn ready(&self) -> FromCore<'static> {
        FromCore::Ready {
            protocol: PROTOCOL_VERSION,
            configured: self.configured.is_some(),
            policy_version: self.policy.version(),
        }
    }

    async fn send(&self, message: &FromCore<'_>) {
        let mut frame = [0u8; MAX_FRAME_LEN];
        match encode_frame(message, &mut frame) {
            Ok(len) => self.uart.write_all(&frame[..len]).await,
            Err(error) => defmt::error!("cannot frame an answer: {}", error),
        }
    }

    async fn garbled(&self) {
        counters::record_mailbox_error();
        self.send(&FromCore::Garbled).await;
    }

    async fn handle(&mut self, message: ToCore<'_>) {
        match message {
            ToCore::Hello => self.send(&self.ready()).await,
            ToCore::Configure { line, bridge } => {
                let answer = match self.configure(line, bridge) {
                    Ok(first) => {
                        if first {
                            bus::COMMANDS.send(BusCommand::Configure(line)).await;
                        }
                        FromCore::Configured
                    }
                    Err(reason) => FromCore::ConfigureRefused { reason },
                };
                self.send(&answer).await;
            }
            ToCore::BundleBegin { len } => {
                if let Err(reason) = self.policy.begin(len) {
                    self.refuse_bundle(reason).await;
                }
            }
            ToCore::BundleChunk { offset, data } => {
                if let Err(reason) = self.policy.chunk(offset, data) {
                    self.refuse_bundle(reason).await;
                }
            }
            ToCore::BundleCommit => {
                let started = Instant::now();
                let result = self.policy.commit();
                let took_ms = started.elapsed().as_millis();
                match result {
                    Ok(version) => {
                        defmt::info!(
                            "policy bundle {} verified and applied ({} ms)",
                            version,
                            took_ms
                        );
                        self.send(&FromCore::BundleAccepted { version }).await;
                    }
                    Err(reason) => self.refuse_bundle(reason).await,
                }
            }
            ToCore::Transact {
                id,
                unit,
                source,
                pdu,
            } => {
                let outcome = self.admit(id, unit, source, pdu);
                if let Some(outcome) = outcome {
                    self.send(&FromCore::Outcome { id, outcome }).await;
                }
            }
            ToCore::ReadCounters => {
                let mut counters = counters::snapshot();
                // Bytes the mailbox UART had to drop broke a frame each, at worst.
                counters.mailbox_errors =
                    counters.mailbox_errors.saturating_add(self.uart.dropped());
                self.send(&FromCore::Counters(counters)).await;
            }
            _ => self.garbled().await,
        }
    }

    /// Accepts line settings; `Ok(true)` the first time.
    fn configure(&mut self, line: LineSettings, bridge: &str) -> Result<bool, ConfigureRefusal> {
        if !(1200..=921_600).contains(&line.baud)
            || !(1..=2).contains(&line.stop_bits)
            || line.retries > 10
            || line.response_timeout_ms == 0
        {
            return Err(ConfigureRefusal::BadLine);
        }
        let mut name = heapless::String::new();
        if bridge.is_empty() || name.push_str(bridge).is_err() {
            return Err(ConfigureRefusal::BadBridgeName);
        }
        match &self.configured {
            Some(current) if current.line == line && current.bridge == name => Ok(false),
            Some(_) => Err(ConfigureRefusal::AlreadyConfigured),
            None => {
                defmt::info!("bridge {=str} configured", bridge);
                self.configured = Some(Configured { line, bridge: name });
                Ok(true)
            }
        }
    }

    /// Checks a request with the policy and queues it for the bus; returns the
    /// outcome now if it does not go to the bus.
    fn admit(
        &mut self,
        id: u32,
        unit: u8,
        source: warden_rtcore_mailbox::RequestSource,
        pdu: &[u8],
    ) -> Option<Outcome<'static>> {
        let Some(configured) = &self.configured else {
            return Some(Outcome::NotConfigured);
        };
        let Ok(request) = Request::decode(pdu) else {
            return Some(Outcome::BadRequest);
        };
        let now_ms = Instant::now().as_millis();
        if let Err(denied) = self
            .policy
            .check(&configured.bridge, unit, source, &request, now_ms)
        {
            counters::record_denied();
            defmt::info!(
                "denied: unit {} function {} address {} count {}: {}",
                unit,
                request.function().code(),
                request.address(),
                request.count(),
                denied
            );
            return Some(denied);
        }
        match bus::COMMANDS.try_send(BusCommand::Transact(Job { id, unit, request })) {
            Ok(()) => None,
            Err(_) => Some(Outcome::Busy),
        }
    }

    async fn refuse_bundle(&self, reason: warden_rtcore_mailbox::BundleRefusal) {
        counters::record_bundle_refused();
        defmt::warn!("policy bundle refused: {}", reason);
        self.send(&FromCore::BundleRefused { reason }).await;
    }
}
