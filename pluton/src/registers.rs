//! Measurement registers: SHA-256, extend-only, reset only at boot; boot ones latchable.

use sha2::{Digest, Sha256};

use crate::PlutonError;
use crate::roles::BOOT_REGISTERS;

/// Number of measurement registers.
pub const REGISTER_COUNT: usize = 8;

/// A SHA-256 digest: a register value or a measurement.
pub type Sha256Digest = [u8; 32];

/// The measurement registers of one boot.
///
/// Every register starts at all zeroes when pluton starts (the only reset) and changes
/// only by [`MeasurementRegisters::extend`]: `new = SHA-256(old || measurement)`, so a
/// value commits to the whole ordered sequence of measurements. Once the boot stage
/// has latched them ([`MeasurementRegisters::latch_boot`], like leaving a TPM locality),
/// registers `0..BOOT_REGISTERS` refuse every extend until the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementRegisters {
    values: [Sha256Digest; REGISTER_COUNT],
    boot_latched: bool,
}

impl MeasurementRegisters {
    /// The registers as they are at boot: all zeroes.
    pub const fn at_boot() -> Self {
        Self {
            values: [[0u8; 32]; REGISTER_COUNT],
            boot_latched: false,
        }
    }

    /// Close the boot registers until the next start (idempotent).
    pub fn latch_boot(&mut self) {
        self.boot_latched = true;
    }

    /// Whether the boot registers are latched.
    pub fn boot_latched(&self) -> bool {
        self.boot_latched
    }

    /// Extend register `index` with `measurement`. A boot register after the latch is
    /// `CapabilityRequired`.
    pub fn extend(&mut self, index: u8, measurement: &Sha256Digest) -> Result<(), PlutonError> {
        check_extend(self.boot_latched, index)?;
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

/// Whether register `index` may be extended: a boot register after the latch is
/// `CapabilityRequired`, an index out of range `InvalidRegister`. Every backend asks this
/// before it extends.
pub(crate) fn check_extend(boot_latched: bool, index: u8) -> Result<(), PlutonError> {
    if boot_latched && index < BOOT_REGISTERS {
        return Err(PlutonError::CapabilityRequired);
    }
    if usize::from(index) >= REGISTER_COUNT {
        return Err(PlutonError::InvalidRegister);
    }
    Ok(())
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
    fn the_boot_latch_closes_registers_0_to_3_only() {
        let mut registers = MeasurementRegisters::at_boot();
        registers.extend(0, &[1u8; 32]).expect("before the latch");
        registers.latch_boot();
        for index in 0..BOOT_REGISTERS {
            assert_eq!(
                registers.extend(index, &[1u8; 32]),
                Err(PlutonError::CapabilityRequired)
            );
        }
        registers
            .extend(BOOT_REGISTERS, &[1u8; 32])
            .expect("runtime register");
        assert!(registers.boot_latched());
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
