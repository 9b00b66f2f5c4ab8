//! The IPC wire types and codec, shared by the server and the `-api` client.
//!
//! Framing: a `u32` little-endian body length, then a postcard-encoded [`Request`] or
//! [`Response`] of at most [`MAX_FRAME_LEN`] bytes. One request, one response, in order,
//! on a Unix stream socket. Enum variants are encoded by position: append new variants
//! at the end, never reorder or remove (bump [`PROTOCOL_VERSION`] if semantics change).

use serde::{Deserialize, Serialize};

use crate::PlutonError;
use crate::backend::{IdentityInfo, RootOfTrust, StatusInfo};
use crate::byte_array::ByteArray;
use crate::capability::ProvisioningCapability;
use crate::counters::COUNTER_COUNT;
use crate::identity::{PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::quote::{MAX_NONCE_LEN, MAX_QUOTE_LEN};
use crate::registers::{REGISTER_COUNT, Sha256Digest};
use crate::roles::{BOOT_REGISTERS, CounterName, Operation, Role, RoleToken, RoleTokens, permits};
use crate::sealing::{MAX_SEAL_LABEL, MAX_SEAL_PLAINTEXT, MAX_SEALED_LEN, SealOwner};
use crate::store::{InstalledRootKey, MAX_ROOT_KEYS};

/// Protocol version reported in [`Response::Status`]. Version 2: per-caller rights
/// (`Authenticate`, `EndBoot`, named counters; role checks on every request).
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest frame body, in bytes (requests and responses).
pub const MAX_FRAME_LEN: usize = 2048;

/// Length of the frame header (the body length).
pub const FRAME_HEADER_LEN: usize = 4;

/// Longest message the TLS-sign request carries (TLS 1.3 content with a SHA-384 hash).
pub const MAX_TLS_MESSAGE_LEN: usize = 64 + 33 + 1 + 48;

/// Longest PKCS#10 CertificationRequestInfo the CSR-sign request carries (a device ID
/// and serial number as subject, the P-256 key, no attributes: about 200 bytes).
pub const MAX_CERTIFICATE_REQUEST_INFO_LEN: usize = 512;

/// A request to pluton.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per frame on the stack of a no_std core without an allocator; the \
              TPM backend's sealed blobs make Seal/Unseal and Sealed the largest by ~330 bytes"
)]
pub enum Request {
    /// State summary. Answer: [`Response::Status`].
    Status,
    /// The identity public key and device ID (the data for the device certificate).
    /// Answer: [`Response::Identity`].
    ExportIdentity,
    /// Create the identity; with the capability, a factory reset. Answer: `Identity`.
    CreateIdentity {
        /// The provisioning capability, to replace an existing identity.
        factory_reset: Option<ProvisioningCapability>,
    },
    /// Install a vendor root key. Answer: [`Response::Done`].
    InstallRootKey {
        /// The provisioning capability.
        capability: ProvisioningCapability,
        /// The root key and its purposes.
        root: InstalledRootKey,
    },
    /// The installed root keys. Answer: [`Response::RootKeys`].
    ListRootKeys,
    /// Lock manufacturing state. Answer: [`Response::Done`].
    LockManufacturing {
        /// The provisioning capability.
        capability: ProvisioningCapability,
    },
    /// Extend a measurement register. Answer: [`Response::Done`].
    ExtendRegister {
        /// Register index, `0..8`.
        index: u8,
        /// The measurement (a SHA-256 digest).
        measurement: Sha256Digest,
    },
    /// The measurement registers. Answer: [`Response::Registers`].
    ReadRegisters,
    /// The monotonic counters. Answer: [`Response::Counters`].
    ReadCounters,
    /// Advance a counter (never down). Answer: [`Response::Counter`].
    AdvanceCounter {
        /// The provisioning capability (held by the security monitor).
        capability: ProvisioningCapability,
        /// Counter index, `0..8`.
        index: u8,
        /// The new value, at least the current one.
        value: u64,
    },
    /// An attestation quote over a fresh nonce. Answer: [`Response::Quote`].
    Quote {
        /// The verifier's nonce, 32 to 64 bytes.
        nonce: heapless::Vec<u8, MAX_NONCE_LEN>,
    },
    /// Sign a TLS 1.3 client CertificateVerify content. Answer: [`Response::Signature`].
    SignTls13ClientCertificateVerify {
        /// The content rustls passes to `Signer::sign`.
        message: heapless::Vec<u8, MAX_TLS_MESSAGE_LEN>,
    },
    /// Seal data for the calling uid. Answer: [`Response::Sealed`].
    Seal {
        /// The caller's name for the data, 1 to 32 bytes.
        label: heapless::Vec<u8, MAX_SEAL_LABEL>,
        /// Registers to bind to (bit *i* = register *i*).
        register_mask: u8,
        /// The data, at most 1024 bytes.
        plaintext: heapless::Vec<u8, MAX_SEAL_PLAINTEXT>,
    },
    /// Open a blob sealed by the calling uid. Answer: [`Response::Unsealed`].
    Unseal {
        /// The label used when sealing.
        label: heapless::Vec<u8, MAX_SEAL_LABEL>,
        /// The sealed blob.
        sealed: heapless::Vec<u8, MAX_SEALED_LEN>,
    },
    /// Take on the role a token was issued for (a role token from the host, or the
    /// provisioning capability for [`Role::Boot`]); the first request of a connection
    /// whose uid does not decide its role. Answer: [`Response::Authenticated`].
    Authenticate {
        /// The token.
        token: RoleToken,
    },
    /// Latch the boot registers until pluton restarts (boot role; the image is about to
    /// run). Answer: [`Response::Done`].
    EndBoot,
    /// Read a named counter the caller's role may read. Answer: [`Response::Counter`].
    ReadNamedCounter {
        /// The counter.
        counter: CounterName,
    },
    /// Advance a named counter the caller's role owns (never down; durable on answer).
    /// Answer: [`Response::Counter`].
    AdvanceNamedCounter {
        /// The counter.
        counter: CounterName,
        /// The new value, at least the current one.
        value: u64,
    },
    /// Sign a PKCS#10 CertificationRequestInfo (DER) whose public key is this device's
    /// identity key, and nothing else: the certificate renewal's CSR. Answer:
    /// [`Response::Signature`] (ECDSA P-256 over SHA-256 of `info`).
    SignCertificateRequest {
        /// The DER CertificationRequestInfo.
        info: heapless::Vec<u8, MAX_CERTIFICATE_REQUEST_INFO_LEN>,
    },
}

/// Pluton's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per frame on the stack of a no_std core without an allocator; the \
              TPM backend's sealed blobs make Seal/Unseal and Sealed the largest by ~330 bytes"
)]
pub enum Response {
    /// The request was refused or failed.
    Error(PlutonError),
    /// The request succeeded and has no data.
    Done,
    /// State summary, with the protocol version.
    Status {
        /// [`PROTOCOL_VERSION`] of the server.
        protocol_version: u8,
        /// The summary.
        status: StatusInfo,
    },
    /// The identity's public data.
    Identity(IdentityInfo),
    /// The installed root keys.
    RootKeys(heapless::Vec<InstalledRootKey, MAX_ROOT_KEYS>),
    /// The measurement registers.
    Registers([Sha256Digest; REGISTER_COUNT]),
    /// The monotonic counters.
    Counters([u64; COUNTER_COUNT]),
    /// A counter's value after an advance.
    Counter(u64),
    /// A quote (see [`crate::quote`] for the format).
    Quote(heapless::Vec<u8, MAX_QUOTE_LEN>),
    /// An ECDSA P-256 signature, `r || s`.
    Signature(ByteArray<SIGNATURE_LEN>),
    /// A sealed blob.
    Sealed(heapless::Vec<u8, MAX_SEALED_LEN>),
    /// Unsealed data.
    Unsealed(heapless::Vec<u8, MAX_SEAL_PLAINTEXT>),
    /// The role the connection now has.
    Authenticated(Role),
}

/// Number of [`Request`] variants this build knows; a higher discriminant is an
/// [`PlutonError::UnknownRequest`] rather than a malformed frame.
const KNOWN_REQUESTS: u32 = 19;

/// Who sent a request, as the transport established it (never from the request body,
/// except through `Authenticate`, which this core checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The peer's uid (`SO_PEERCRED`).
    pub uid: u32,
    /// The caller's role: from the host's uid map, or `None` until it authenticates.
    pub role: Option<Role>,
}

impl Caller {
    /// A caller of `role`.
    pub fn with_role(uid: u32, role: Role) -> Self {
        Self {
            uid,
            role: Some(role),
        }
    }

    /// Whose namespace this caller seals in.
    fn seal_owner(&self) -> Result<SealOwner, PlutonError> {
        match self.role {
            Some(Role::Unseparated) => Ok(SealOwner::Uid(self.uid)),
            Some(role) => Ok(SealOwner::Role(role)),
            None => Err(PlutonError::NotPermitted),
        }
    }
}

/// The right `request` needs, from the one table in [`crate::roles`]; `None` for the
/// requests with their own rule (`Authenticate`: anyone; named counters: per counter).
fn operation_of(request: &Request) -> Option<Operation> {
    Some(match request {
        Request::Status | Request::ExportIdentity | Request::ReadRegisters => Operation::ReadPublic,
        Request::CreateIdentity { .. }
        | Request::InstallRootKey { .. }
        | Request::LockManufacturing { .. }
        | Request::AdvanceCounter { .. } => Operation::Provision,
        Request::ListRootKeys => Operation::ReadRoots,
        Request::ExtendRegister { index, .. } if *index < BOOT_REGISTERS => {
            Operation::ExtendBootRegister
        }
        Request::ExtendRegister { .. } => Operation::ExtendRuntimeRegister,
        Request::EndBoot => Operation::EndBoot,
        Request::ReadCounters => Operation::ReadAllCounters,
        Request::Quote { .. } => Operation::Quote,
        Request::SignTls13ClientCertificateVerify { .. } => Operation::SignTls,
        Request::SignCertificateRequest { .. } => Operation::SignCertificateRequest,
        Request::Seal { .. } | Request::Unseal { .. } => Operation::Seal,
        Request::Authenticate { .. }
        | Request::ReadNamedCounter { .. }
        | Request::AdvanceNamedCounter { .. } => return None,
    })
}

/// The role `token` grants: [`Role::Boot`] for the provisioning capability, else the
/// role the host issued it for.
fn authenticate<B: RootOfTrust + ?Sized, T: RoleTokens + ?Sized>(
    backend: &B,
    tokens: &T,
    token: &RoleToken,
) -> Result<Role, PlutonError> {
    let issued = tokens.role_of(token);
    let capability = ProvisioningCapability::from_bytes(*token.as_bytes());
    if backend.check_provisioning_capability(&capability).is_ok() {
        return Ok(Role::Boot);
    }
    issued.ok_or(PlutonError::CapabilityInvalid)
}

/// Read a frame header: the body length, or `FrameTooLarge` / `MalformedRequest`.
pub fn frame_body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, PlutonError> {
    let length = u32::from_le_bytes(header) as usize;
    if length == 0 {
        Err(PlutonError::MalformedRequest)
    } else if length > MAX_FRAME_LEN {
        Err(PlutonError::FrameTooLarge)
    } else {
        Ok(length)
    }
}

/// Encode `message` as a frame (header + body) into `out`; returns the frame length.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut [u8]) -> Result<usize, PlutonError> {
    let limit = out.len().min(FRAME_HEADER_LEN + MAX_FRAME_LEN);
    let body = out
        .get_mut(FRAME_HEADER_LEN..limit)
        .ok_or(PlutonError::BufferTooSmall)?;
    let body_len = postcard::to_slice(message, body)
        .map_err(|_| PlutonError::BufferTooSmall)?
        .len();
    out[..FRAME_HEADER_LEN].copy_from_slice(&(body_len as u32).to_le_bytes());
    Ok(FRAME_HEADER_LEN + body_len)
}

/// Decode a request frame body. Never panics; trailing bytes, over-long fields and unknown
/// operations are errors.
pub fn decode_request(body: &[u8]) -> Result<Request, PlutonError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(PlutonError::FrameTooLarge);
    }
    match postcard::take_from_bytes::<Request>(body) {
        Ok((request, [])) => Ok(request),
        Ok(_) => Err(PlutonError::MalformedRequest),
        Err(_) => match postcard::take_from_bytes::<u32>(body) {
            Ok((discriminant, _)) if discriminant >= KNOWN_REQUESTS => {
                Err(PlutonError::UnknownRequest)
            }
            _ => Err(PlutonError::MalformedRequest),
        },
    }
}

/// Decode a response frame body.
pub fn decode_response(body: &[u8]) -> Result<Response, PlutonError> {
    match postcard::take_from_bytes::<Response>(body) {
        Ok((response, [])) => Ok(response),
        _ => Err(PlutonError::MalformedRequest),
    }
}

fn into_response<T>(result: Result<T, PlutonError>, ok: impl FnOnce(T) -> Response) -> Response {
    match result {
        Ok(value) => ok(value),
        Err(error) => Response::Error(error),
    }
}

/// Carry out one decoded request against a root of trust (the sans-IO server core):
/// check the caller's rights, then do it. `Authenticate` changes `caller.role`.
pub fn handle_request<B: RootOfTrust + ?Sized, T: RoleTokens + ?Sized>(
    backend: &mut B,
    caller: &mut Caller,
    tokens: &T,
    request: &Request,
) -> Response {
    if let Some(operation) = operation_of(request)
        && !permits(caller.role, operation)
    {
        return Response::Error(if operation == Operation::ExtendBootRegister {
            PlutonError::CapabilityRequired
        } else {
            PlutonError::NotPermitted
        });
    }
    match request {
        Request::Authenticate { token } => {
            into_response(authenticate(backend, tokens, token), |role| {
                caller.role = Some(role);
                Response::Authenticated(role)
            })
        }
        Request::EndBoot => {
            backend.end_boot();
            Response::Done
        }
        Request::ReadNamedCounter { counter } => {
            let rights = counter.rights();
            if !caller.role.is_some_and(|role| rights.read.contains(&role)) {
                return Response::Error(PlutonError::NotPermitted);
            }
            Response::Counter(backend.counters()[usize::from(rights.index)])
        }
        Request::AdvanceNamedCounter { counter, value } => {
            let rights = counter.rights();
            if !caller
                .role
                .is_some_and(|role| rights.advance.contains(&role))
            {
                return Response::Error(PlutonError::NotPermitted);
            }
            into_response(
                backend.advance_owned_counter(rights.index, *value),
                Response::Counter,
            )
        }
        Request::Status => Response::Status {
            protocol_version: PROTOCOL_VERSION,
            status: backend.status(),
        },
        Request::ExportIdentity => into_response(backend.identity(), Response::Identity),
        Request::CreateIdentity { factory_reset } => into_response(
            backend.create_identity(factory_reset.as_ref()),
            Response::Identity,
        ),
        Request::InstallRootKey { capability, root } => {
            into_response(backend.install_root_key(capability, *root), |()| {
                Response::Done
            })
        }
        Request::ListRootKeys => Response::RootKeys(backend.root_keys()),
        Request::LockManufacturing { capability } => {
            into_response(backend.lock_manufacturing(capability), |()| Response::Done)
        }
        Request::ExtendRegister { index, measurement } => {
            into_response(backend.extend_register(*index, measurement), |()| {
                Response::Done
            })
        }
        Request::ReadRegisters => Response::Registers(backend.registers()),
        Request::ReadCounters => Response::Counters(backend.counters()),
        Request::AdvanceCounter {
            capability,
            index,
            value,
        } => into_response(
            backend.advance_counter(capability, *index, *value),
            Response::Counter,
        ),
        Request::Quote { nonce } => {
            let mut out = [0u8; MAX_QUOTE_LEN];
            into_response(backend.quote(nonce, &mut out), |length| {
                Response::Quote(heapless::Vec::from_slice(&out[..length]).unwrap_or_default())
            })
        }
        Request::SignTls13ClientCertificateVerify { message } => into_response(
            backend.sign_tls13_client_certificate_verify(message),
            |signature| Response::Signature(ByteArray(signature)),
        ),
        Request::SignCertificateRequest { info } => {
            into_response(backend.sign_certificate_request(info), |signature| {
                Response::Signature(ByteArray(signature))
            })
        }
        Request::Seal {
            label,
            register_mask,
            plaintext,
        } => {
            let mut out = [0u8; MAX_SEALED_LEN];
            into_response(
                caller.seal_owner().and_then(|owner| {
                    backend.seal(owner, label, *register_mask, plaintext, &mut out)
                }),
                |length| {
                    Response::Sealed(heapless::Vec::from_slice(&out[..length]).unwrap_or_default())
                },
            )
        }
        Request::Unseal { label, sealed } => {
            let mut out = zeroize::Zeroizing::new([0u8; MAX_SEAL_PLAINTEXT]);
            into_response(
                caller
                    .seal_owner()
                    .and_then(|owner| backend.unseal(owner, label, sealed, out.as_mut())),
                |length| {
                    Response::Unsealed(
                        heapless::Vec::from_slice(&out[..length]).unwrap_or_default(),
                    )
                },
            )
        }
    }
}

/// Decode one request body, carry it out, and encode the response frame into `out`
/// (at least `FRAME_HEADER_LEN + MAX_FRAME_LEN` bytes); returns the frame length.
///
/// Every input gets a response: a malformed, oversized or unknown request is answered
/// with [`Response::Error`]. This is what the server runs per frame and what the fuzz
/// target and property tests drive.
pub fn handle_request_frame<B: RootOfTrust + ?Sized, T: RoleTokens + ?Sized>(
    backend: &mut B,
    caller: &mut Caller,
    tokens: &T,
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, PlutonError> {
    let response = match decode_request(body) {
        Ok(request) => handle_request(backend, caller, tokens, &request),
        Err(error) => Response::Error(error),
    };
    encode_frame(&response, out)
}

/// Compile-time check: the largest response fits a frame.
const _: () = assert!(MAX_SEALED_LEN + 16 <= MAX_FRAME_LEN);
const _: () = assert!(MAX_QUOTE_LEN + 16 <= MAX_FRAME_LEN);
const _: () = assert!(PUBLIC_KEY_LEN * MAX_ROOT_KEYS + 16 <= MAX_FRAME_LEN);
