//! Anti-rollback counters in TPM NV: one ordinary 8-byte NV index per counter.
//!
//! Why ordinary indices: a `TPM_NT_COUNTER` index only moves by one per
//! `TPM2_NV_Increment`, and pluton's counters hold versions (advancing 3 to 2026120601
//! would take two billion commands); `TPM_NT_BITS` allows 64 steps; an extend index is
//! not ordered. So each counter is an ordinary index that pluton writes only upward:
//! it reads the value, refuses anything lower, and writes the new value with one
//! `TPM2_NV_Write` of all 8 bytes. The TPM makes each command's NV update atomic, so a
//! kill -9 (or power loss) during an advance leaves the old or the new value, never a
//! mix or anything lower; the advance is acknowledged only after the write returned.
//! A new index is defined and written 0; one never written (a crash in between) reads as
//! 0 too (`TPM_RC_NV_UNINITIALIZED`).
//!
//! Indices `0x01805700..0x01805708` (the owner's range), owner-authorized, `NO_DA`.
//! The upward-only rule is pluton's: anyone holding owner authorization could write the
//! indices down, which is why the TPM device belongs to pluton alone (README).

use tss_esapi::Context;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{CapabilityData, MaxNvBuffer, NvPublicBuilder};

use crate::PlutonError;
use crate::counters::COUNTER_COUNT;
use crate::tpm::context::{failed, is_kind, with_password};

/// NV index of counter 0; counter *i* is at `FIRST_COUNTER_INDEX + i`.
pub const FIRST_COUNTER_INDEX: u32 = 0x0180_5700;

/// The counters' NV indices, defined and opened.
#[derive(Debug)]
pub(crate) struct NvCounters {
    handles: [NvIndexHandle; COUNTER_COUNT],
}

impl NvCounters {
    /// Open every counter's index, defining the ones that do not exist yet.
    pub(crate) fn open(context: &mut Context) -> Result<Self, PlutonError> {
        let defined = defined_indices(context)?;
        let mut handles = [NvIndexHandle::from(ObjectHandle::None); COUNTER_COUNT];
        for (index, handle) in handles.iter_mut().enumerate() {
            let nv_index = FIRST_COUNTER_INDEX + index as u32;
            *handle = if defined.contains(&nv_index) {
                open_index(context, nv_index)?
            } else {
                define(context, nv_index)?
            };
        }
        Ok(Self { handles })
    }

    /// Every counter's value.
    pub(crate) fn read_all(
        &self,
        context: &mut Context,
    ) -> Result<[u64; COUNTER_COUNT], PlutonError> {
        let mut values = [0u64; COUNTER_COUNT];
        for (value, handle) in values.iter_mut().zip(&self.handles) {
            *value = read(context, *handle)?;
        }
        Ok(values)
    }

    /// Advance counter `index` to `value`: equal is a no-op, lower is refused, higher is
    /// written (durable when this returns).
    pub(crate) fn advance(
        &self,
        context: &mut Context,
        index: u8,
        value: u64,
    ) -> Result<u64, PlutonError> {
        let handle = *self
            .handles
            .get(usize::from(index))
            .ok_or(PlutonError::InvalidCounter)?;
        let current = read(context, handle)?;
        if value < current {
            return Err(PlutonError::CounterWouldDecrease);
        }
        if value > current {
            write(context, handle, value)?;
        }
        Ok(value)
    }
}

/// The counters' NV indices that are defined (asked first, so no command fails just
/// because an index is new).
fn defined_indices(
    context: &mut Context,
) -> Result<heapless::Vec<u32, COUNTER_COUNT>, PlutonError> {
    let (data, _) = context
        .get_capability(
            CapabilityType::Handles,
            FIRST_COUNTER_INDEX,
            COUNTER_COUNT as u32,
        )
        .map_err(failed("TPM2_GetCapability (NV indices)"))?;
    let CapabilityData::Handles(handles) = data else {
        return Err(PlutonError::TpmFailed);
    };
    Ok(handles
        .iter()
        .filter_map(|handle| match handle {
            TpmHandle::NvIndex(index) => Some(u32::from(*index)),
            _ => None,
        })
        .filter(|index| {
            (FIRST_COUNTER_INDEX..FIRST_COUNTER_INDEX + COUNTER_COUNT as u32).contains(index)
        })
        .collect())
}

fn open_index(context: &mut Context, index: u32) -> Result<NvIndexHandle, PlutonError> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(failed("NV index handle"))?;
    context
        .tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle))
        .map(NvIndexHandle::from)
        .map_err(failed("ESYS_TR_FromTPMPublic (NV)"))
}

/// Define a counter's index and write 0 (a crash in between leaves it unwritten, which
/// reads as 0 as well).
fn define(context: &mut Context, index: u32) -> Result<NvIndexHandle, PlutonError> {
    let tpm_handle = NvIndexTpmHandle::new(index).map_err(failed("NV index handle"))?;
    let attributes = NvIndexAttributesBuilder::new()
        .with_owner_write(true)
        .with_owner_read(true)
        .with_no_da(true)
        .build()
        .map_err(failed("NV attributes"))?;
    let public = NvPublicBuilder::new()
        .with_nv_index(tpm_handle)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
        .map_err(failed("NV public"))?;
    let handle = with_password(context, |context| {
        context.nv_define_space(Provision::Owner, None, public)
    })
    .map_err(failed("TPM2_NV_DefineSpace"))?;
    write(context, handle, 0)?;
    Ok(handle)
}

fn write(context: &mut Context, handle: NvIndexHandle, value: u64) -> Result<(), PlutonError> {
    let data = MaxNvBuffer::try_from(value.to_be_bytes().to_vec()).map_err(failed("NV buffer"))?;
    with_password(context, |context| {
        context.nv_write(NvAuth::Owner, handle, data, 0)
    })
    .map_err(failed("TPM2_NV_Write"))
}

fn read(context: &mut Context, handle: NvIndexHandle) -> Result<u64, PlutonError> {
    match with_password(context, |context| {
        context.nv_read(NvAuth::Owner, handle, 8, 0)
    }) {
        Ok(data) => {
            let bytes: [u8; 8] = data
                .value()
                .try_into()
                .map_err(|_| PlutonError::TpmFailed)?;
            Ok(u64::from_be_bytes(bytes))
        }
        Err(error) if is_kind(&error, Tss2ResponseCodeKind::NvUninitialized) => Ok(0),
        Err(error) => Err(failed("TPM2_NV_Read")(error)),
    }
}
