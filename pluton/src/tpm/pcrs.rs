//! Measurement registers as PCRs: register *i* is PCR 8 + *i* of the SHA-256 bank.
//!
//! PCRs 8..16 are the OS's (TCG PC Client: 0..8 belong to the firmware, 16 is debug,
//! 17..23 are the dynamic-launch ones). They are reset only when the platform resets, so
//! unlike the software backend's registers they keep their values across pluton
//! restarts: a measurement made by `warden boot` stays in the quote until reboot.

use tss_esapi::Context;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    Digest, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
};

use crate::PlutonError;
use crate::quote::tpm::FIRST_REGISTER_PCR;
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::tpm::context::{failed, with_password};

const REGISTER_SLOTS: [PcrSlot; REGISTER_COUNT] = [
    PcrSlot::Slot8,
    PcrSlot::Slot9,
    PcrSlot::Slot10,
    PcrSlot::Slot11,
    PcrSlot::Slot12,
    PcrSlot::Slot13,
    PcrSlot::Slot14,
    PcrSlot::Slot15,
];

const REGISTER_HANDLES: [PcrHandle; REGISTER_COUNT] = [
    PcrHandle::Pcr8,
    PcrHandle::Pcr9,
    PcrHandle::Pcr10,
    PcrHandle::Pcr11,
    PcrHandle::Pcr12,
    PcrHandle::Pcr13,
    PcrHandle::Pcr14,
    PcrHandle::Pcr15,
];

const _: () = assert!(FIRST_REGISTER_PCR == 8);

/// The SHA-256 selection of the registers in `mask` (bit *i* = register *i*).
pub(crate) fn selection(mask: u8) -> Result<PcrSelectionList, PlutonError> {
    let slots: heapless::Vec<PcrSlot, REGISTER_COUNT> = REGISTER_SLOTS
        .iter()
        .enumerate()
        .filter(|(index, _)| mask & (1 << index) != 0)
        .map(|(_, slot)| *slot)
        .collect();
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(failed("PCR selection"))
}

/// All eight registers' PCRs.
pub(crate) fn all_registers() -> Result<PcrSelectionList, PlutonError> {
    selection(0xff)
}

/// PCR_Extend register `index` (already checked against the boot latch) with
/// `measurement` in the SHA-256 bank.
pub(crate) fn extend(
    context: &mut Context,
    index: u8,
    measurement: &Sha256Digest,
) -> Result<(), PlutonError> {
    let handle = *REGISTER_HANDLES
        .get(usize::from(index))
        .ok_or(PlutonError::InvalidRegister)?;
    let mut digests = DigestValues::new();
    digests.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(measurement.to_vec()).map_err(failed("digest buffer"))?,
    );
    with_password(context, |context| context.pcr_extend(handle, digests))
        .map_err(failed("TPM2_PCR_Extend"))
}

/// Read the registers' PCRs (one TPM2_PCR_Read: eight digests fit one answer).
pub(crate) fn read(context: &mut Context) -> Result<[Sha256Digest; REGISTER_COUNT], PlutonError> {
    let selection = all_registers()?;
    let (_, selected, digests) = context
        .execute_without_session(|context| context.pcr_read(selection))
        .map_err(failed("TPM2_PCR_Read"))?;
    if selected != all_registers()? || digests.value().len() != REGISTER_COUNT {
        tracing::error!("TPM2_PCR_Read did not return the eight register PCRs");
        return Err(PlutonError::TpmFailed);
    }
    let mut registers = [[0u8; 32]; REGISTER_COUNT];
    for (register, digest) in registers.iter_mut().zip(digests.value()) {
        if digest.value().len() != 32 {
            return Err(PlutonError::TpmFailed);
        }
        register.copy_from_slice(digest.value());
    }
    Ok(registers)
}
