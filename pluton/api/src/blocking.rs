//! The blocking client (std `UnixStream` with read and write timeouts).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_pluton::byte_array::ByteArray;
use warden_pluton::counters::COUNTER_COUNT;
use warden_pluton::protocol::{FRAME_HEADER_LEN, Request, Response};
use warden_pluton::registers::{REGISTER_COUNT, Sha256Digest};
use warden_pluton::store::MAX_ROOT_KEYS;
use zeroize::Zeroizing;

use crate::error::{ClientError, bounded, operation_name};
use crate::frame_io::{DEFAULT_TIMEOUT, decode, encode_request, response_body_len};
use warden_pluton::{
    CounterName, IdentityInfo, InstalledRootKey, ProvisioningCapability, Role, RoleToken,
    StatusInfo,
};

/// A connection to pluton. One request at a time; reconnect after an I/O error.
#[derive(Debug)]
pub struct PlutonClient {
    stream: UnixStream,
    socket_path: PathBuf,
}

impl PlutonClient {
    /// Connect with the default timeout.
    pub fn connect(socket_path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with_timeout(socket_path, DEFAULT_TIMEOUT)
    }

    /// Connect; every read and write then fails after `timeout`.
    pub fn connect_with_timeout(
        socket_path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let socket_path = socket_path.as_ref().to_owned();
        let connect_error = |source| ClientError::Connect {
            path: socket_path.clone(),
            source,
        };
        let stream = UnixStream::connect(&socket_path).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_error)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_error)?;
        Ok(Self {
            stream,
            socket_path,
        })
    }

    /// Connect and take on the role `token` was issued for (see [`Self::authenticate`]).
    pub fn connect_as(
        socket_path: impl AsRef<Path>,
        token: &RoleToken,
    ) -> Result<Self, ClientError> {
        let mut client = Self::connect(socket_path)?;
        client.authenticate(token)?;
        Ok(client)
    }

    /// Connect as the boot role: present the provisioning capability (the boot stage,
    /// the monitor, the provisioning station).
    pub fn connect_as_boot(
        socket_path: impl AsRef<Path>,
        capability: &ProvisioningCapability,
    ) -> Result<Self, ClientError> {
        let mut client = Self::connect(socket_path)?;
        client.authenticate_boot(capability)?;
        Ok(client)
    }

    /// Present a role token the host handed this compartment at launch; the connection
    /// then has that role's rights. Needed where pluton cannot tell roles apart by uid.
    pub fn authenticate(&mut self, token: &RoleToken) -> Result<Role, ClientError> {
        let request = Request::Authenticate {
            token: token.clone(),
        };
        expect_role(self.call(&request)?)
    }

    /// Present the provisioning capability: the connection becomes [`Role::Boot`] (the
    /// boot stage, the monitor, the provisioning station).
    pub fn authenticate_boot(
        &mut self,
        capability: &ProvisioningCapability,
    ) -> Result<Role, ClientError> {
        self.authenticate(&RoleToken::from_bytes(*capability.as_bytes()))
    }

    /// Latch the boot registers (0 to 3) until pluton restarts: what `warden boot` does
    /// once it has measured the image and before the image runs. Boot role only.
    pub fn end_boot(&mut self) -> Result<(), ClientError> {
        expect_done(self.call(&Request::EndBoot)?, "end boot")
    }

    /// A named counter this connection's role may read.
    pub fn named_counter(&mut self, counter: CounterName) -> Result<u64, ClientError> {
        expect_counter(
            self.call(&Request::ReadNamedCounter { counter })?,
            "read named counter",
        )
    }

    /// Advance a named counter this connection's role owns to `value` (never down;
    /// durable when this returns). Returns the value.
    pub fn advance_named_counter(
        &mut self,
        counter: CounterName,
        value: u64,
    ) -> Result<u64, ClientError> {
        expect_counter(
            self.call(&Request::AdvanceNamedCounter { counter, value })?,
            "advance named counter",
        )
    }

    /// Send one request and wait for its response. An error answer is
    /// [`ClientError::Refused`].
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let operation = operation_name(request);
        let io_error = |source| ClientError::Io {
            path: self.socket_path.clone(),
            source,
        };
        let frame = Zeroizing::new(encode_request(request)?);
        self.stream.write_all(&frame).map_err(io_error)?;
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.stream.read_exact(&mut header).map_err(io_error)?;
        let length = response_body_len(header, operation)?;
        let mut body = Zeroizing::new(vec![0u8; length]);
        self.stream.read_exact(&mut body).map_err(io_error)?;
        decode(&body, operation)
    }

    /// Pluton's state summary and protocol version.
    pub fn status(&mut self) -> Result<(u8, StatusInfo), ClientError> {
        match self.call(&Request::Status)? {
            Response::Status {
                protocol_version,
                status,
            } => Ok((protocol_version, status)),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "status",
            }),
        }
    }

    /// The identity public key and device ID.
    pub fn export_identity(&mut self) -> Result<IdentityInfo, ClientError> {
        expect_identity(self.call(&Request::ExportIdentity)?, "export identity")
    }

    /// Create the identity (provisioning); with a capability, a factory reset.
    pub fn create_identity(
        &mut self,
        factory_reset: Option<&ProvisioningCapability>,
    ) -> Result<IdentityInfo, ClientError> {
        let request = Request::CreateIdentity {
            factory_reset: factory_reset.cloned(),
        };
        expect_identity(self.call(&request)?, "create identity")
    }

    /// Install a vendor root public key for `purposes` (bitmask of
    /// `warden_keychain::Purpose`).
    pub fn install_root_key(
        &mut self,
        capability: &ProvisioningCapability,
        public_key: &[u8; 65],
        purposes: u8,
    ) -> Result<(), ClientError> {
        let root = InstalledRootKey {
            public_key: ByteArray(*public_key),
            purposes,
        };
        let request = Request::InstallRootKey {
            capability: capability.clone(),
            root,
        };
        expect_done(self.call(&request)?, "install root key")
    }

    /// The installed root keys.
    pub fn root_keys(
        &mut self,
    ) -> Result<heapless::Vec<InstalledRootKey, MAX_ROOT_KEYS>, ClientError> {
        match self.call(&Request::ListRootKeys)? {
            Response::RootKeys(roots) => Ok(roots),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "list root keys",
            }),
        }
    }

    /// Lock manufacturing state.
    pub fn lock_manufacturing(
        &mut self,
        capability: &ProvisioningCapability,
    ) -> Result<(), ClientError> {
        let request = Request::LockManufacturing {
            capability: capability.clone(),
        };
        expect_done(self.call(&request)?, "lock manufacturing")
    }

    /// Extend measurement register `index` with `measurement`.
    pub fn extend_register(
        &mut self,
        index: u8,
        measurement: &Sha256Digest,
    ) -> Result<(), ClientError> {
        let request = Request::ExtendRegister {
            index,
            measurement: *measurement,
        };
        expect_done(self.call(&request)?, "extend register")
    }

    /// The measurement registers.
    pub fn registers(&mut self) -> Result<[Sha256Digest; REGISTER_COUNT], ClientError> {
        match self.call(&Request::ReadRegisters)? {
            Response::Registers(registers) => Ok(registers),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "read registers",
            }),
        }
    }

    /// The monotonic counters.
    pub fn counters(&mut self) -> Result<[u64; COUNTER_COUNT], ClientError> {
        match self.call(&Request::ReadCounters)? {
            Response::Counters(counters) => Ok(counters),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "read counters",
            }),
        }
    }

    /// Advance counter `index` to `value` (never down; durable when this returns).
    pub fn advance_counter(
        &mut self,
        capability: &ProvisioningCapability,
        index: u8,
        value: u64,
    ) -> Result<u64, ClientError> {
        let request = Request::AdvanceCounter {
            capability: capability.clone(),
            index,
            value,
        };
        expect_counter(self.call(&request)?, "advance counter")
    }

    /// An attestation quote over `nonce` (32 to 64 bytes); verify it with
    /// `warden_pluton::verify_quote`.
    pub fn quote(&mut self, nonce: &[u8]) -> Result<Vec<u8>, ClientError> {
        let request = Request::Quote {
            nonce: bounded(nonce, "nonce")?,
        };
        match self.call(&request)? {
            Response::Quote(quote) => Ok(quote.to_vec()),
            _ => Err(ClientError::UnexpectedResponse { operation: "quote" }),
        }
    }

    /// Sign a TLS 1.3 client CertificateVerify content; returns `r || s`.
    pub fn sign_tls13_client_certificate_verify(
        &mut self,
        message: &[u8],
    ) -> Result<[u8; 64], ClientError> {
        let request = Request::SignTls13ClientCertificateVerify {
            message: bounded(message, "message")?,
        };
        match self.call(&request)? {
            Response::Signature(signature) => Ok(signature.0),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "tls sign",
            }),
        }
    }

    /// Sign a DER PKCS#10 CertificationRequestInfo for this device's identity key (the
    /// link's certificate renewal); returns `r || s` over its SHA-256. Pluton refuses
    /// anything else (`NotCertificateRequest`).
    pub fn sign_certificate_request(&mut self, info: &[u8]) -> Result<[u8; 64], ClientError> {
        let request = Request::SignCertificateRequest {
            info: bounded(info, "certification request info")?,
        };
        match self.call(&request)? {
            Response::Signature(signature) => Ok(signature.0),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "sign certificate request",
            }),
        }
    }

    /// Seal `plaintext` for this process's uid under `label`, bound to the registers in
    /// `register_mask`.
    pub fn seal(
        &mut self,
        label: &[u8],
        register_mask: u8,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::Seal {
            label: bounded(label, "label")?,
            register_mask,
            plaintext: bounded(plaintext, "plaintext")?,
        };
        match self.call(&request)? {
            Response::Sealed(sealed) => Ok(sealed.to_vec()),
            _ => Err(ClientError::UnexpectedResponse { operation: "seal" }),
        }
    }

    /// Open a blob this uid sealed under `label`.
    pub fn unseal(
        &mut self,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let request = Request::Unseal {
            label: bounded(label, "label")?,
            sealed: bounded(sealed, "sealed blob")?,
        };
        match self.call(&request)? {
            Response::Unsealed(plaintext) => Ok(Zeroizing::new(plaintext.to_vec())),
            _ => Err(ClientError::UnexpectedResponse {
                operation: "unseal",
            }),
        }
    }
}

pub(crate) fn expect_identity(
    response: Response,
    operation: &'static str,
) -> Result<IdentityInfo, ClientError> {
    match response {
        Response::Identity(identity) => Ok(identity),
        _ => Err(ClientError::UnexpectedResponse { operation }),
    }
}

pub(crate) fn expect_role(response: Response) -> Result<Role, ClientError> {
    match response {
        Response::Authenticated(role) => Ok(role),
        _ => Err(ClientError::UnexpectedResponse {
            operation: "authenticate",
        }),
    }
}

fn expect_counter(response: Response, operation: &'static str) -> Result<u64, ClientError> {
    match response {
        Response::Counter(value) => Ok(value),
        _ => Err(ClientError::UnexpectedResponse { operation }),
    }
}

fn expect_done(response: Response, operation: &'static str) -> Result<(), ClientError> {
    match response {
        Response::Done => Ok(()),
        _ => Err(ClientError::UnexpectedResponse { operation }),
    }
}
