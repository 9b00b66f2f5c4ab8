//! The fleet's registration API, as the `provisioner` role uses it.
//!
//! `POST /api/v1/products`, `POST /api/v1/devices`, `GET /api/v1/devices/{id}`, each with
//! `Authorization: Bearer <token>`. Both POSTs are idempotent on the fleet's side (200
//! for the same record again), which is what makes a resumed batch safe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_wire::fleet_api::{
    DEVICES_PATH, PRODUCTS_PATH, ProductRequest, RegisterRequest, RegisterResponse, device_path,
};
use zeroize::Zeroizing;

/// A device registration (`POST /api/v1/devices`): the fleet's request type.
pub type DeviceRegistration = RegisterRequest;

/// The fleet refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The token could not be read.
    #[error("fleet token: {0}")]
    Token(String),
    /// The request did not complete.
    #[error("fleet {operation}: {source}")]
    Transport {
        /// What was being done.
        operation: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The fleet answered with an error status.
    #[error("fleet {operation}: HTTP {status}: {body}")]
    Status {
        /// What was being done.
        operation: String,
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The CA file trusted for an `https://` fleet could not be used.
    #[error("fleet https trust {}: {reason}", path.display())]
    Trust {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The answer did not match the request.
    #[error("fleet {operation}: {reason}")]
    Mismatch {
        /// What was being done.
        operation: String,
        /// What did not match.
        reason: String,
    },
}

/// A TLS client config trusting only the CAs in `ca` (PEM).
fn https_config(ca: &Path) -> Result<rustls::ClientConfig, FleetError> {
    warden_wire::tls::server_auth_config(ca).map_err(|error| FleetError::Trust {
        path: ca.to_owned(),
        reason: error.to_string(),
    })
}

/// Where the provisioner token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// An environment variable.
    Env(String),
    /// A file (first line).
    File(PathBuf),
}

impl TokenSource {
    fn read(&self) -> Result<Zeroizing<String>, FleetError> {
        let token = match self {
            Self::Env(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
                FleetError::Token(format!("environment variable {name} is not set"))
            })?),
            Self::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
                    FleetError::Token(format!("cannot read {}: {error}", path.display()))
                })?);
                Zeroizing::new(text.lines().next().unwrap_or("").trim().to_owned())
            }
        };
        if token.trim().is_empty() {
            return Err(FleetError::Token("the token is empty".into()));
        }
        Ok(token)
    }
}

/// A client of the fleet's provisioning API.
#[derive(Debug)]
pub struct FleetClient {
    base: String,
    token: Zeroizing<String>,
    http: reqwest::blocking::Client,
}

impl FleetClient {
    /// A client for `base_url` with the token from `token`. An `https://` fleet must
    /// present a certificate chaining to a CA of `https_ca` (PEM; no other root is
    /// trusted), over the tree's one TLS stack (rustls, ring).
    pub fn new(
        base_url: &str,
        token: &TokenSource,
        timeout: Duration,
        https_ca: &Path,
    ) -> Result<Self, FleetError> {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if base_url.starts_with("https://") {
            builder = builder.use_preconfigured_tls(https_config(https_ca)?);
        }
        let http = builder.build().map_err(|source| FleetError::Transport {
            operation: "client setup".into(),
            source,
        })?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.read()?,
            http,
        })
    }

    fn send(
        &self,
        operation: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<(u16, String), FleetError> {
        let response = request
            .bearer_auth(self.token.as_str())
            .send()
            .map_err(|source| FleetError::Transport {
                operation: operation.to_owned(),
                source,
            })?;
        let status = response.status().as_u16();
        let body = response.text().unwrap_or_default();
        Ok((status, body))
    }

    /// Create the product with its manufacturer CA (idempotent: an identical product is
    /// accepted, a different CA under the same name is an error).
    pub fn ensure_product(&self, name: &str, manufacturer_ca_pem: &str) -> Result<(), FleetError> {
        let operation = format!("create product {name:?}");
        let body = ProductRequest {
            name: name.to_owned(),
            manufacturer_ca_pem: manufacturer_ca_pem.to_owned(),
        };
        let (status, text) = self.send(
            &operation,
            self.http
                .post(format!("{}{PRODUCTS_PATH}", self.base))
                .json(&body),
        )?;
        match status {
            200 | 201 => Ok(()),
            _ => Err(status_error(operation, status, &text)),
        }
    }

    /// Register a device; an identical registration again is accepted (200).
    pub fn register_device(
        &self,
        registration: &DeviceRegistration,
    ) -> Result<RegisterResponse, FleetError> {
        let operation = format!("register device {}", registration.device_id);
        let (status, text) = self.send(
            &operation,
            self.http
                .post(format!("{}{DEVICES_PATH}", self.base))
                .json(registration),
        )?;
        if status != 200 && status != 201 {
            return Err(status_error(operation, status, &text));
        }
        let record: RegisterResponse =
            serde_json::from_str(&text).map_err(|error| FleetError::Mismatch {
                operation: operation.clone(),
                reason: format!("unreadable answer: {error}"),
            })?;
        if record.device_id != registration.device_id
            || record.product != registration.product
            || record.group != registration.group
        {
            return Err(FleetError::Mismatch {
                operation,
                reason: format!("the fleet recorded {record:?}"),
            });
        }
        Ok(record)
    }

    /// The fleet's record of `device_id` (`None` if unknown), as JSON.
    pub fn device(&self, device_id: &str) -> Result<Option<serde_json::Value>, FleetError> {
        let operation = format!("look up device {device_id}");
        let (status, text) = self.send(
            &operation,
            self.http
                .get(format!("{}{}", self.base, device_path(device_id))),
        )?;
        match status {
            200 => serde_json::from_str(&text)
                .map(Some)
                .map_err(|error| FleetError::Mismatch {
                    operation,
                    reason: format!("unreadable answer: {error}"),
                }),
            404 => Ok(None),
            _ => Err(status_error(operation, status, &text)),
        }
    }
}

fn status_error(operation: String, status: u16, body: &str) -> FleetError {
    FleetError::Status {
        operation,
        status,
        body: body.chars().take(300).collect(),
    }
}
