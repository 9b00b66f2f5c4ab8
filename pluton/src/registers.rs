//! Measurement registers: SHA-256, extend-only, reset only at boot.

use sha2::{Digest, Sha256};

use crate::PlutonError;

/// Number of measurement registers.
pub const REGISTER_COUNT: usize = 8;

/// A SHA-256 digest: a register value or a measurement.
pub type Sha256Digest = [u8; 32];

/// The measurement registers of one boot.
///
/// Every register starts at all zeroes when pluton starts (the only reset) and changes
/// only by [`MeasurementRegisters::extend`]: `new = SHA-256(old || measurement)`, so a
/// value commits to the whole ordered sequence of measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementRegisters {
    values: [Sha256Digest; REGISTER_COUNT],
}

impl MeasurementRegisters {
    /// The registers as they are at boot: all zeroes.
    pub const fn at_boot() -> Self {
        Self {
            values: [[0u8; 32]; REGISTER_COUNT],
        }
    }

    /// Extend register `index` with `measurement`.
    pub fn extend(&mut self, index: u8, measurement: &Sha256Digest) -> Result<(), PlutonError> {
        let register = self
            .values
            .get_mut(usize::from(index))
            .ok_or(PlutonError::InvalidRegister)?;
        let next = Sha256::new()
            .chain_update(*register)
            .chain_update(measurement)
            .finalize();
        register.copy_from_slice(&next);
        Ok(())
    }

    /// The current register values.
    pub fn values(&self) -> &[Sha256Digest; REGISTER_COUNT] {
        &self.values
    }

    /// The register values an event log of `(register, measurement)` produces from boot;
    /// a verifier replays the log and compares with a quote's registers.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a (u8, Sha256Digest)>,
    ) -> Result<Self, PlutonError> {
        let mut registers = Self::at_boot();
        for (index, measurement) in events {
            registers.extend(*index, measurement)?;
        }
        Ok(registers)
    }
}

impl Default for MeasurementRegisters {
    fn default() -> Self {
        Self::at_boot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_is_hash_chaining_and_order_sensitive() {
        let mut registers = MeasurementRegisters::at_boot();
        registers.extend(2, &[1u8; 32]).expect("extend");
        let expected: [u8; 32] = Sha256::new()
            .chain_update([0u8; 32])
            .chain_update([1u8; 32])
            .finalize()
            .into();
        assert_eq!(registers.values()[2], expected);
        assert_eq!(registers.values()[0], [0u8; 32]);

        let a = MeasurementRegisters::replay(&[(0, [1u8; 32]), (0, [2u8; 32])]).expect("replay");
        let b = MeasurementRegisters::replay(&[(0, [2u8; 32]), (0, [1u8; 32])]).expect("replay");
        assert_ne!(a, b);
    }

    #[test]
    fn out_of_range_register_is_refused() {
        let mut registers = MeasurementRegisters::at_boot();
        assert_eq!(
            registers.extend(8, &[0u8; 32]),
            Err(PlutonError::InvalidRegister)
        );
        assert_eq!(
            registers.extend(255, &[0u8; 32]),
            Err(PlutonError::InvalidRegister)
        );
    }
}
