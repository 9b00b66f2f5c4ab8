//! A bridge's counters and state, shared with the status page, and how events count.
//!
//! Below the bridge and its transports: the RTU bus owner and the real-time core's
//! client count into it as the bridge handle does.

/// Counters and state of one bridge, shared with the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BridgeHealth {
    /// True while the bridge holds a working connection or an open serial port.
    pub connected: bool,
    /// Read requests answered with values.
    pub reads_ok: u64,
    /// Requests that failed (timeout, I/O, bad frame), after retries.
    pub errors: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
    /// Requests the policy refused (never sent).
    pub denied: u64,
    /// Writes confirmed by the equipment.
    pub writes_ok: u64,
    /// Attempts that timed out (RTU; each retry counts).
    pub timeouts: u64,
    /// Retries sent after a timeout or a garbled answer.
    pub retries: u64,
    /// Frames with a bad CRC (RTU).
    pub crc_errors: u64,
    /// Bytes discarded as line noise (RTU).
    pub noise_bytes: u64,
    /// Modbus TCP answers from another unit than the one asked (refused).
    #[serde(default)]
    pub wrong_unit: u64,
    /// The last error, for people.
    pub last_error: Option<String>,
    /// The same counters per unit (slave ID) on this line or gateway, by unit.
    #[serde(default)]
    pub units: Vec<UnitHealth>,
}

/// Counters of one unit (slave ID) behind a bridge: on a shared RS-485 line the one
/// unit that times out or answers garbled is told apart from its neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitHealth {
    /// The unit ID.
    pub unit: u8,
    /// Read requests answered with values.
    pub reads_ok: u64,
    /// Requests that failed after retries.
    pub errors: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
    /// Requests the policy refused.
    pub denied: u64,
    /// Writes confirmed by the unit.
    pub writes_ok: u64,
    /// Attempts that timed out (each retry counts).
    pub timeouts: u64,
    /// Retries sent.
    pub retries: u64,
    /// Answers with a bad CRC.
    pub crc_errors: u64,
    /// Answers from another unit (Modbus TCP; refused).
    #[serde(default)]
    pub wrong_unit: u64,
    /// The unit's last error, for people.
    pub last_error: Option<String>,
}

/// Something that happened to a bridge's request, counted by [`BridgeHealth::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// A read answered with values.
    ReadOk,
    /// A write confirmed.
    WriteOk,
    /// A request failed after its retries (the text says why).
    Error(String),
    /// The equipment answered with an exception (the text says which).
    Exception(String),
    /// The policy refused a request (the text says what and why).
    Denied(String),
    /// An attempt timed out.
    Timeout,
    /// A retry was sent.
    Retry,
    /// Frames with a bad CRC.
    CrcErrors(u64),
    /// Bytes discarded as line noise (a line counter: no unit).
    NoiseBytes(u64),
    /// A Modbus TCP answer from another unit than the one asked, refused.
    WrongUnit,
}

impl BridgeHealth {
    /// Counts `event` in the bridge's totals and, when the unit is known, in that unit's.
    pub fn record(&mut self, unit: Option<u8>, event: HealthEvent) {
        apply(&mut Totals::Bridge(self), &event);
        if let Some(unit) = unit
            && !matches!(event, HealthEvent::NoiseBytes(_))
        {
            let index = match self.units.binary_search_by_key(&unit, |u| u.unit) {
                Ok(index) => index,
                Err(index) => {
                    self.units.insert(
                        index,
                        UnitHealth {
                            unit,
                            ..UnitHealth::default()
                        },
                    );
                    index
                }
            };
            apply(&mut Totals::Unit(&mut self.units[index]), &event);
        }
    }

    /// The counters of `unit`, if anything was counted for it.
    pub fn unit(&self, unit: u8) -> Option<&UnitHealth> {
        self.units
            .binary_search_by_key(&unit, |u| u.unit)
            .ok()
            .map(|index| &self.units[index])
    }
}

/// The bridge's and a unit's counters share names; one function counts into either.
enum Totals<'a> {
    Bridge(&'a mut BridgeHealth),
    Unit(&'a mut UnitHealth),
}

fn apply(totals: &mut Totals<'_>, event: &HealthEvent) {
    macro_rules! counters {
        ($t:expr) => {{
            let t = $t;
            match event {
                HealthEvent::ReadOk => t.reads_ok += 1,
                HealthEvent::WriteOk => t.writes_ok += 1,
                HealthEvent::Error(text) => {
                    t.errors += 1;
                    t.last_error = Some(text.clone());
                }
                HealthEvent::Exception(text) => {
                    t.exceptions += 1;
                    t.last_error = Some(text.clone());
                }
                HealthEvent::Denied(text) => {
                    t.denied += 1;
                    t.last_error = Some(text.clone());
                }
                HealthEvent::Timeout => t.timeouts += 1,
                HealthEvent::Retry => t.retries += 1,
                HealthEvent::CrcErrors(n) => t.crc_errors += n,
                HealthEvent::WrongUnit => t.wrong_unit += 1,
                HealthEvent::NoiseBytes(_) => {}
            }
        }};
    }
    match totals {
        Totals::Bridge(bridge) => {
            if let HealthEvent::NoiseBytes(n) = event {
                bridge.noise_bytes += n;
            }
            counters!(&mut **bridge);
        }
        Totals::Unit(unit) => counters!(&mut **unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_the_totals_and_in_their_unit() {
        let mut health = BridgeHealth::default();
        health.record(Some(7), HealthEvent::ReadOk);
        health.record(Some(3), HealthEvent::Timeout);
        health.record(Some(3), HealthEvent::Error("unit 3: timed out".into()));
        health.record(Some(7), HealthEvent::CrcErrors(2));
        health.record(None, HealthEvent::NoiseBytes(5));
        assert_eq!(
            (
                health.reads_ok,
                health.timeouts,
                health.errors,
                health.crc_errors
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(health.noise_bytes, 5);
        assert_eq!(health.last_error.as_deref(), Some("unit 3: timed out"));
        // Kept in unit order whatever order they first appeared in.
        let units: Vec<u8> = health.units.iter().map(|u| u.unit).collect();
        assert_eq!(units, [3, 7]);
        let three = health.unit(3).expect("unit 3");
        assert_eq!((three.timeouts, three.errors, three.reads_ok), (1, 1, 0));
        let seven = health.unit(7).expect("unit 7");
        assert_eq!(
            (seven.reads_ok, seven.crc_errors, seven.last_error.clone()),
            (1, 2, None)
        );
    }
}
