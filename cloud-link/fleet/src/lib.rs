#![doc = include_str!("../README.md")]

pub mod api;
pub mod attestation;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod deployments;
pub mod descriptors;
pub mod enrollment;
pub mod http_listener;
pub mod images;
pub mod ingest;
pub mod init;
pub mod issuing;
#[cfg(feature = "loadtest")]
pub mod loadtest;
pub mod metrics;
pub mod renewal;
pub mod revocations;
pub mod store;
pub mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warden_toml_position::{line_and_column, locate};

/// The fleet service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// HTTP API and dashboard address (`127.0.0.1:8080`; port 0 picks a free one).
    pub http_listen: String,
    /// MQTT over TLS address of the embedded broker (`127.0.0.1:8883`).
    pub mqtt_listen: String,
    /// `sqlite://PATH` (default kind) or `postgres://…`.
    pub database_url: String,
    /// SQLite connections for read-only API lookups besides the one writer (default
    /// [`store::READ_CONNECTIONS`]; 0: every query on the writer). Unused with
    /// PostgreSQL.
    #[serde(default)]
    pub database_read_connections: Option<u32>,
    /// `postgres://…` of a read replica (a hot standby of `database_url`) for the
    /// read-only dashboard and API listings; unset: they read the primary. PostgreSQL
    /// only. See [`store::Store::with_replica`].
    #[serde(default)]
    pub database_replica_url: Option<String>,
    /// PEM: the broker's server certificate.
    pub server_cert: PathBuf,
    /// PEM: the broker's server key.
    pub server_key: PathBuf,
    /// PEM: a manufacturer CA whose device certificates the fleet accepts (besides
    /// the CAs of the products created through the API); a device of it that nobody
    /// registered is enrolled at its first connection in the product
    /// [`enrollment::CONFIGURED_PRODUCT`] (group "No Updates"). None (what
    /// `warden-fleet init` writes): only the products' CAs are trusted.
    #[serde(default)]
    pub manufacturer_ca: Option<PathBuf>,
    /// `[http]`: the HTTP listener's connection caps, timeouts, download cap and TLS.
    #[serde(default)]
    pub http: http_listener::HttpConfig,
    /// `[broker]`: the broker listener's connection caps and timeouts.
    #[serde(default)]
    pub broker: broker::BrokerConfig,
    /// `[api]`: tokens and their roles. Default: none, every API call is refused.
    #[serde(default)]
    pub api: auth::ApiConfig,
    /// `[images]`: vendor roots and where uploaded images are kept.
    #[serde(default)]
    pub images: ImagesConfig,
    /// `[rollouts]`: how often deployments are stepped.
    #[serde(default)]
    pub rollouts: RolloutConfig,
    /// `[telemetry]`: how long the time series is kept.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// `[metrics]`: the Prometheus listener. Default: none.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[certificates]`: the issuing CAs renewed device certificates come from (the
    /// fleet's, each product's), and their validity. Default: none, renewal requests
    /// are refused.
    #[serde(default)]
    pub certificates: issuing::CertificatesConfig,
    /// This instance's ID among several on one PostgreSQL (shown by `/healthz` and in
    /// logs; each instance needs its own). Default: random at each start.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `HOST:PORT` of the Prometheus `/metrics` listener, apart from the API's (so
    /// it can stay on loopback or a private network while the API faces units and
    /// stations). Unauthenticated. None: `/metrics` is not served.
    #[serde(default)]
    pub listen: Option<String>,
}

impl FleetConfig {
    /// Reads and parses the config file at `path`, checks its values (see
    /// [`FleetConfig::check`]) and that the files it names can be opened.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::from_toml(&text, path)?;
        config
            .check_files()
            .map_err(|error| ConfigError::value(&text, path, &error))?;
        Ok(config)
    }

    /// Parses `text`, the content of `path` (named in errors), and checks its values.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error: toml::de::Error| {
            // toml's span points at the offending key or value.
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_and_column(text, span.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message: error.message().trim_end().to_owned(),
            }
        })?;
        config
            .check()
            .map_err(|error| ConfigError::value(text, path, &error))?;
        Ok(config)
    }

    /// Checks what the types do not: token hashes, vendor roots, listener addresses,
    /// the database URL's kind, and the rollout timings against each other. The
    /// error names the field ([`ConfigValueError::field`]).
    pub fn check(&self) -> Result<(), ConfigValueError> {
        for (field, value) in [
            ("http_listen", Some(&self.http_listen)),
            ("mqtt_listen", Some(&self.mqtt_listen)),
            ("metrics.listen", self.metrics.listen.as_ref()),
        ]
        .into_iter()
        .filter_map(|(field, value)| Some((field, value?)))
        {
            let host_port = value
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !host_port {
                return Err(ConfigValueError::Listen {
                    field,
                    value: value.clone(),
                });
            }
        }
        // Port 0 picks a free port for each; any other port can be bound once.
        if self.http_listen == self.mqtt_listen && !self.http_listen.ends_with(":0") {
            return Err(ConfigValueError::SameListen(self.http_listen.clone()));
        }
        if let Some(metrics) = &self.metrics.listen
            && !metrics.ends_with(":0")
            && (*metrics == self.http_listen || *metrics == self.mqtt_listen)
        {
            return Err(ConfigValueError::MetricsListen(metrics.clone()));
        }
        if !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|scheme| self.database_url.starts_with(scheme))
        {
            return Err(ConfigValueError::DatabaseUrl(self.database_url.clone()));
        }
        if let Some(replica) = &self.database_replica_url
            && (self.database_url.starts_with("sqlite:")
                || !["postgres:", "postgresql:"]
                    .iter()
                    .any(|scheme| replica.starts_with(scheme)))
        {
            return Err(ConfigValueError::ReplicaUrl);
        }
        self.http.check()?;
        self.broker.check()?;
        if self.api.anonymous_role.is_some() && !is_loopback_listen(&self.http_listen) {
            return Err(ConfigValueError::AnonymousNotLoopback(
                self.http_listen.clone(),
            ));
        }
        auth::Authorizer::new(&self.api)?;
        images::vendor_root_keys(&self.images.vendor_roots)?;
        self.certificates.check()?;
        self.rollouts.check()
    }

    /// Checks that the certificate and key files the config names can be opened.
    fn check_files(&self) -> Result<(), ConfigValueError> {
        let certificates = self.certificates.files();
        for (field, path) in [
            ("server_cert", Some(self.server_cert.as_path())),
            ("server_key", Some(self.server_key.as_path())),
            ("manufacturer_ca", self.manufacturer_ca.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, path)| Some((field.to_owned(), path?)))
        .chain(certificates)
        {
            std::fs::File::open(path).map_err(|source| ConfigValueError::File {
                field,
                path: path.to_owned(),
                source,
            })?;
        }
        if let Some(tls) = &self.http.tls {
            for (field, path) in [("http.tls.cert", &tls.cert), ("http.tls.key", &tls.key)] {
                std::fs::File::open(path).map_err(|source| ConfigValueError::File {
                    field: field.to_owned(),
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// Whether a `HOST:PORT` listener address is on loopback only (`127.0.0.0/8`, `::1`,
/// `localhost`): `0.0.0.0` and every other address may be reached from the network.
fn is_loopback_listen(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Why the fleet's config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid fleet config: toml's message, or a
    /// [`ConfigValueError`]'s, naming the field.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Line of the offending key or value, from 1 (0: unknown).
        line: usize,
        /// Column, from 1 (0: unknown).
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl ConfigError {
    /// `error`, found in `text` (the content of `path`), at the line of its field.
    fn value(text: &str, path: &Path, error: &ConfigValueError) -> Self {
        let (line, column) = locate(text, &error.field()).unwrap_or((0, 0));
        Self::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: error.to_string(),
        }
    }
}

/// A config value of the right type that cannot be used. Each message names the
/// field; [`ConfigValueError::field`] gives its TOML path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigValueError {
    /// An `[http]` limit of zero.
    #[error(transparent)]
    HttpLimit(#[from] http_listener::HttpLimitError),
    /// A `[broker]` limit of zero, or above the one it is part of.
    #[error(transparent)]
    BrokerLimit(#[from] broker::BrokerLimitError),
    /// A token hash is not a SHA-256 in hex.
    #[error(transparent)]
    TokenHash(#[from] auth::TokenHashError),
    /// A vendor root is not a key.
    #[error(transparent)]
    VendorRoot(#[from] images::VendorRootError),
    /// A `[certificates]` value that cannot be used.
    #[error(transparent)]
    Certificates(#[from] issuing::CertificatesConfigError),
    /// Trust would lapse between two scheduled challenges.
    #[error(
        "rollouts.attestation_valid_secs ({valid}) must exceed \
         rollouts.attestation_interval_secs ({interval}), or trust lapses between two \
         scheduled challenges"
    )]
    TrustLapses {
        /// `rollouts.attestation_valid_secs`.
        valid: u64,
        /// `rollouts.attestation_interval_secs`.
        interval: u64,
    },
    /// A listener address without a host and a port number.
    #[error("{field} {value:?} is not HOST:PORT")]
    Listen {
        /// `http_listen`, `mqtt_listen` or `metrics.listen`.
        field: &'static str,
        /// What the config says.
        value: String,
    },
    /// Requests without a token allowed on a listener the network can reach.
    #[error(
        "api.anonymous_role is only allowed when http_listen is a loopback address \
         (127.0.0.1, [::1], localhost), and http_listen is {0:?}: anyone who reaches it \
         would read the fleet without a token"
    )]
    AnonymousNotLoopback(String),
    /// The API and the broker on one address.
    #[error("http_listen and mqtt_listen are both {0:?}: each needs its own port")]
    SameListen(String),
    /// The metrics listener on the API's or the broker's address.
    #[error(
        "metrics.listen {0:?} is the address of http_listen or mqtt_listen: it needs its own port"
    )]
    MetricsListen(String),
    /// A database the store cannot open.
    #[error("database_url {0:?} is neither sqlite://… nor postgres://…")]
    DatabaseUrl(String),
    /// A read replica that is not PostgreSQL, or beside a SQLite database. (The URL
    /// is not shown: it may hold a password.)
    #[error(
        "database_replica_url needs database_url and the replica both on PostgreSQL \
         (postgres://…): SQLite has no replicas"
    )]
    ReplicaUrl,
    /// A certificate or key file that cannot be opened.
    #[error("{field} {}: {source}", path.display())]
    File {
        /// `server_cert`, `server_key`, `manufacturer_ca`, `http.tls.cert`,
        /// `http.tls.key`, or an issuing CA's file (`certificates.….issuing_ca_cert`).
        field: String,
        /// The file.
        path: PathBuf,
        /// Why it cannot be opened.
        source: std::io::Error,
    },
}

impl ConfigValueError {
    /// The config key at fault, as a TOML path (`api.tokens[1].sha256`).
    pub fn field(&self) -> String {
        match self {
            Self::HttpLimit(error) => format!("http.{}", error.field),
            Self::BrokerLimit(error) => error.field(),
            Self::TokenHash(error) => error.field(),
            Self::VendorRoot(error) => error.field(),
            Self::Certificates(error) => issuing::CertificatesConfig::field(error),
            Self::TrustLapses { .. } => "rollouts.attestation_valid_secs".to_owned(),
            Self::Listen { field, .. } => (*field).to_owned(),
            Self::File { field, .. } => field.clone(),
            Self::SameListen(_) => "mqtt_listen".to_owned(),
            Self::MetricsListen(_) => "metrics.listen".to_owned(),
            Self::AnonymousNotLoopback(_) => "api.anonymous_role".to_owned(),
            Self::DatabaseUrl(_) => "database_url".to_owned(),
            Self::ReplicaUrl => "database_replica_url".to_owned(),
        }
    }
}

/// The `[telemetry]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Days of readings kept in the time series, by the time the fleet received them
    /// (a device's clock may be unset or wrong; default 30; 0 keeps everything).
    /// Latest values are kept whatever their age.
    #[serde(default = "default_keep_days")]
    pub keep_days: u32,
    /// Seconds a reading may be dated after the fleet received it and still become the
    /// latest value of its point (default 300). Later-dated readings are stored in the
    /// time series but never pin the latest value (a clock set to 2100).
    #[serde(default = "default_max_future_skew_secs")]
    pub max_future_skew_secs: u64,
}

fn default_max_future_skew_secs() -> u64 {
    store::DEFAULT_FUTURE_SKEW.as_secs()
}

fn default_keep_days() -> u32 {
    30
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            keep_days: default_keep_days(),
            max_future_skew_secs: default_max_future_skew_secs(),
        }
    }
}

/// The `[images]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Vendor root public keys (uncompressed SEC1 P-256, hex) images must chain to.
    /// None: every upload is refused.
    #[serde(default)]
    pub vendor_roots: Vec<String>,
    /// Where images are stored (default: `images/` beside a SQLite database, else
    /// `fleet-images/` in the working directory).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Base URL devices download images from (default `http://{http_listen}` as bound).
    #[serde(default)]
    pub public_url: Option<String>,
}

/// The `[rollouts]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Milliseconds between two steps of every active deployment (default 1000).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Seconds before an unanswered offer is sent again (default 30).
    #[serde(default = "default_reoffer_s")]
    pub reoffer_after_s: u64,
    /// Seconds between two attestations of a connected device (default 3600; 0: only
    /// on connect and on request). Here because trust gates every offer.
    #[serde(default = "default_attestation_interval_secs")]
    pub attestation_interval_secs: u64,
    /// Seconds a verified attestation keeps a device `trusted`; older, it becomes
    /// `unverified` (commands and offers withheld) until a quote verifies again.
    /// Default: twice `attestation_interval_secs`; 0 (or no schedule and no value):
    /// trust does not lapse by age. Must exceed the interval.
    #[serde(default)]
    pub attestation_valid_secs: Option<u64>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            tick_ms: default_tick_ms(),
            reoffer_after_s: default_reoffer_s(),
            attestation_interval_secs: default_attestation_interval_secs(),
            attestation_valid_secs: None,
        }
    }
}

impl RolloutConfig {
    /// How long a verified attestation keeps a device trusted (`None`: forever).
    pub fn trust_valid_for(&self) -> Option<std::time::Duration> {
        let secs = self
            .attestation_valid_secs
            .unwrap_or(self.attestation_interval_secs.saturating_mul(2));
        (secs > 0).then(|| std::time::Duration::from_secs(secs))
    }

    /// Refuses a validity that would let trust lapse between two scheduled challenges.
    fn check(&self) -> Result<(), ConfigValueError> {
        match self.attestation_valid_secs {
            Some(valid)
                if valid > 0
                    && self.attestation_interval_secs > 0
                    && valid <= self.attestation_interval_secs =>
            {
                Err(ConfigValueError::TrustLapses {
                    valid,
                    interval: self.attestation_interval_secs,
                })
            }
            _ => Ok(()),
        }
    }
}

fn default_tick_ms() -> u64 {
    1000
}
fn default_reoffer_s() -> u64 {
    30
}
fn default_attestation_interval_secs() -> u64 {
    3600
}

impl FleetConfig {
    fn image_dir(&self) -> PathBuf {
        if let Some(dir) = &self.images.dir {
            return dir.clone();
        }
        self.database_url
            .strip_prefix("sqlite://")
            .map(|path| path.split('?').next().unwrap_or(path))
            .and_then(|path| std::path::Path::new(path).parent())
            .map_or_else(|| PathBuf::from("fleet-images"), |dir| dir.join("images"))
    }
}

/// A started fleet service.
pub struct RunningFleet {
    /// Where the HTTP API and dashboard listen.
    pub http_address: SocketAddr,
    /// `https` when `[http.tls]` is configured, else `http`.
    pub http_scheme: &'static str,
    /// Where the MQTT broker listens.
    pub mqtt_address: SocketAddr,
    /// Where `/metrics` is served (`[metrics] listen`), if anywhere.
    pub metrics_address: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl RunningFleet {
    /// Waits until the service has stopped (after its shutdown token fired) and its
    /// store is closed.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Logs each `[certificates.products.NAME]` no product of the store has yet (a typo,
/// or a product created later: its settings apply once it exists).
async fn warn_of_unknown_products(store: &store::Store, issuers: &issuing::IssuingCas) {
    let known = match store.products().await {
        Ok(products) => products,
        Err(error) => {
            tracing::warn!(%error, "cannot list products to check [certificates.products]");
            return;
        }
    };
    for name in issuers.configured_products() {
        if !known.iter().any(|product| product.name == name) {
            tracing::warn!(
                product = name,
                "[certificates.products.{name}] names no product of this fleet (yet): its \
                 settings apply once a product of that name is created"
            );
        }
    }
}

/// The broker's trust: the configured CA, every product's CA, registrations and
/// revocations from the store.
async fn load_trust(
    config: &FleetConfig,
    store: &store::Store,
) -> anyhow::Result<enrollment::DeviceTrust> {
    use anyhow::Context as _;
    let configured = match &config.manufacturer_ca {
        Some(path) => {
            let configured =
                warden_wire::tls::load_certificates(path).context("manufacturer_ca")?;
            // The configured CA's devices are enrolled in a product of their own, so
            // that they are registered (revocable, attested) like every other device.
            let configured_pem = std::fs::read_to_string(path).context("manufacturer_ca")?;
            let outcome = store
                .create_product(
                    enrollment::CONFIGURED_PRODUCT,
                    &configured_pem,
                    |stored| {
                        enrollment::certificates_from_pem(stored).is_ok_and(|s| s == configured)
                    },
                    clock::now_ms(),
                )
                .await?;
            if outcome == store::ProductOutcome::Conflict {
                tracing::warn!(
                    product = enrollment::CONFIGURED_PRODUCT,
                    manufacturer_ca = %path.display(),
                    "the store holds another CA for the configured product (an earlier \
                     manufacturer_ca); the config's is the one trusted"
                );
            }
            configured
        }
        None => Vec::new(),
    };
    let trust = enrollment::DeviceTrust::new(configured).map_err(|e| {
        anyhow::anyhow!(
            "manufacturer_ca {}: {e}",
            config
                .manufacturer_ca
                .as_deref()
                .unwrap_or(Path::new("(none)"))
                .display()
        )
    })?;
    refresh_trust(store, &trust).await?;
    Ok(trust)
}

/// Brings `trust` up to the store's products, registrations and revocations (at start,
/// and in a cluster every [`TRUST_REFRESH`], for the changes other instances made).
async fn refresh_trust(
    store: &store::Store,
    trust: &enrollment::DeviceTrust,
) -> anyhow::Result<()> {
    for product in store.products().await? {
        let bundle = enrollment::certificates_from_pem(&product.manufacturer_ca_pem)
            .map_err(|e| anyhow::anyhow!("product {}: manufacturer CA {e}", product.name))?;
        trust
            .set_product_ca(&product.name, bundle)
            .map_err(|e| anyhow::anyhow!("product {}: {e}", product.name))?;
        trust.set_open_enrollment(&product.name, product.open_enrollment);
    }
    for device in store.registered_identities().await? {
        trust.set_registered(&device.device_id, &device.fingerprint, &device.product);
        if device.revoked {
            trust.revoke(&device.fingerprint);
        }
    }
    // Renewed certificates not yet used stay accepted across restarts and instances.
    for (device, fingerprint) in store.issued_renewals().await? {
        trust.set_renewed(&device, &fingerprint);
    }
    Ok(())
}

/// How often an instance of a cluster reloads the broker's trust from the store.
pub const TRUST_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads `trust` every [`TRUST_REFRESH`] until `shutdown` (a cluster: another
/// instance may have registered or revoked a device). Reads every registration each
/// time: fine for thousands of devices; a change log would replace it for millions.
async fn keep_trust_fresh(
    store: store::Store,
    trust: std::sync::Arc<enrollment::DeviceTrust>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TRUST_REFRESH) => {}
        }
        match refresh_trust(&store, &trust).await {
            Ok(()) => failing = false,
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::error!(%error, "cannot reload registrations from the store (logged once)");
                }
            }
        }
    }
}

/// Starts the store, the broker, telemetry ingest and the HTTP API.
pub async fn start(
    config: &FleetConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningFleet> {
    use anyhow::Context as _;

    // A config built in code (tests, the simulators) has not been through `load`.
    config.check()?;
    let authorizer = auth::Authorizer::new(&config.api)?;
    let images = images::ImageStore::new(config.image_dir(), &config.images.vendor_roots)?;
    let store = store::Store::open_with(
        &config.database_url,
        config
            .database_read_connections
            .unwrap_or(store::READ_CONNECTIONS),
    )
    .await
    .with_context(|| format!("cannot open fleet store {}", config.database_url))?;
    let store = match &config.database_replica_url {
        Some(replica) => store
            .with_replica(replica)
            .context("database_replica_url")?,
        None => store,
    };
    store.set_future_skew(std::time::Duration::from_secs(
        config.telemetry.max_future_skew_secs,
    ));
    let trust = std::sync::Arc::new(load_trust(config, &store).await?);
    let issuers = std::sync::Arc::new(issuing::IssuingCas::load(&config.certificates)?);
    {
        let products: Vec<(&str, &[rustls::pki_types::CertificateDer<'static>])> = issuers
            .own_cas()
            .map(|(product, ca)| (product, ca.certificate.as_slice()))
            .collect();
        trust
            .set_issuing_cas(
                issuers.fleet().map(|ca| ca.certificate.as_slice()),
                &products,
            )
            .map_err(|e| anyhow::anyhow!("certificates: an issuing CA: {e}"))?;
    }
    warn_of_unknown_products(&store, &issuers).await;
    let tls = tls::broker_tls_config(
        &config.server_cert,
        &config.server_key,
        std::sync::Arc::clone(&trust),
    )
    .context("server_cert and server_key")?;
    let enroller = enrollment::Enroller {
        store: store.clone(),
        trust: std::sync::Arc::clone(&trust),
    };
    // Descriptors first: the broker's and the HTTP listener's caps are shares of them.
    let open_files = descriptors::raise_descriptor_limit();
    let broker_limits = broker::BrokerLimits::new(&config.broker, open_files);
    tracing::info!(
        open_files,
        max_connections = broker_limits.max_connections,
        max_pending = broker_limits.max_pending,
        per_address = broker_limits.max_pending_per_address,
        "mqtt connection budget"
    );
    let broker = broker::Broker::start_with(
        &config.mqtt_listen,
        tls,
        broker_limits,
        std::sync::Arc::new(enroller),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen for mqtt on {}", config.mqtt_listen))?;
    let mqtt_address = broker.address();
    // Several instances may share PostgreSQL: sessions, deliveries and leadership go
    // through it. A SQLite store has one instance, the leader.
    let (leadership, membership) = if store.is_postgres() {
        let membership = cluster::Cluster::join(
            store.clone(),
            config.instance_id.clone(),
            broker.publisher(),
            shutdown.clone(),
        )
        .await
        .context("cannot join the fleet cluster")?;
        tokio::spawn(keep_trust_fresh(
            store.clone(),
            std::sync::Arc::clone(&trust),
            shutdown.clone(),
        ));
        (membership.leadership.clone(), Some(membership))
    } else {
        (cluster::Leadership::sole(), None)
    };
    let telemetry = broker.subscribe_local(warden_wire::topics::ALL_TELEMETRY, 1024);
    let ingest = tokio::spawn(ingest::run(
        store.clone(),
        telemetry,
        broker.publisher(),
        shutdown.clone(),
    ));

    let limits = http_listener::Limits::new(&config.http, open_files);
    tracing::info!(
        open_files,
        max_connections = limits.max_connections,
        per_address = limits.per_address,
        "http connection budget"
    );
    let http_tls = match &config.http.tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            tls::http_tls_config(&tls.cert, &tls.key).context("http.tls")?,
        )),
        None => None,
    };
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen for http on {}", config.http_listen))?;
    let http_address = listener.local_addr()?;
    let results = broker.subscribe_local(warden_wire::topics::ALL_COMMAND_RESULTS, 256);
    let command_results = tokio::spawn(ingest::command_results(
        store.clone(),
        results,
        broker.publisher(),
        shutdown.clone(),
    ));
    let reports = broker.subscribe_local(warden_wire::topics::ALL_TWIN_REPORTED, 64);
    let twin_reports = tokio::spawn(ingest::twin_reports(
        store.clone(),
        reports,
        broker.publisher(),
        shutdown.clone(),
    ));
    let attestor = attestation::Attestor {
        store: store.clone(),
        devices: broker.publisher(),
        pending: std::sync::Arc::default(),
    };
    let quotes = broker.subscribe_local(attestation::ALL_QUOTES, 256);
    let quote_task = tokio::spawn(attestation::collect_quotes(
        attestor.clone(),
        quotes,
        shutdown.clone(),
    ));
    let attestation_task = tokio::spawn(attestation::run(
        attestor.clone(),
        // Room for a reconnect storm: a dropped notice waits for the schedule.
        broker.challengeable_devices(65_536),
        (config.rollouts.attestation_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(config.rollouts.attestation_interval_secs)),
        config.rollouts.trust_valid_for(),
        shutdown.clone(),
    ));
    let renewer = renewal::Renewer {
        store: store.clone(),
        devices: broker.publisher(),
        trust: std::sync::Arc::clone(&trust),
        attestor: attestor.clone(),
        issuers,
    };
    let renewal_requests =
        broker.subscribe_local(warden_wire::renewal::ALL_CERTIFICATE_REQUESTS, 64);
    let renewal_task = tokio::spawn(renewal::run(
        renewer.clone(),
        renewal_requests,
        shutdown.clone(),
    ));
    // Release-key revocation lists: the newest to each device that subscribes to it
    // (every connect) and to each whose reported twin shows an older one.
    let revocation_lists = revocations::RevocationLists {
        store: store.clone(),
        devices: broker.publisher(),
    };
    let revocation_task = tokio::spawn(revocations::run(
        revocation_lists.clone(),
        broker.revocation_list_listeners(4096),
        broker.subscribe_local(warden_wire::topics::ALL_TWIN_REPORTED, 64),
        shutdown.clone(),
    ));
    let reports = broker.subscribe_local(warden_wire::topics::ALL_REPORTS, 256);
    let events = broker.subscribe_local(warden_wire::topics::ALL_EVENTS, 256);
    let failure_reports = tokio::spawn(ingest::reports_and_events(
        store.clone(),
        reports,
        events,
        broker.publisher(),
        shutdown.clone(),
    ));
    let rollouts = deployments::Rollouts {
        store: store.clone(),
        devices: broker.publisher(),
        trust: std::sync::Arc::clone(&trust),
        image_base_url: config
            .images
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{http_address}"))
            .trim_end_matches('/')
            .to_owned(),
        reoffer_after: std::time::Duration::from_secs(config.rollouts.reoffer_after_s),
        step_lock: std::sync::Arc::default(),
        leader: leadership.clone(),
    };
    let retention_task = tokio::spawn(ingest::prune_telemetry(
        store.clone(),
        config.telemetry.keep_days,
        leadership.clone(),
        shutdown.clone(),
    ));
    let statuses = broker.subscribe_local(warden_wire::topics::ALL_UPDATE_STATUS, 256);
    let rollout_task = tokio::spawn(rollouts.clone().run(
        std::time::Duration::from_millis(config.rollouts.tick_ms.max(10)),
        statuses,
        shutdown.clone(),
    ));
    let app = api::router(api::ApiState {
        store: store.clone(),
        devices: broker.publisher(),
        attestor,
        renewer,
        authorizer,
        trust,
        images,
        rollouts,
        revocation_lists,
        downloads: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.http.max_downloads as usize,
        )),
        instance: membership
            .as_ref()
            .map(|membership| membership.cluster.instance_id.clone()),
    });
    // `/metrics` on its own listener, with the API listener's caps and timeouts.
    let metrics = match &config.metrics.listen {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen for metrics on {listen}"))?;
            let address = listener.local_addr()?;
            let router = metrics::instance_router(
                store.clone(),
                Some(broker.publisher()),
                Some(leadership.clone()),
            );
            // A scraper or two, not a crowd: a small share of the API's caps.
            let scrapers = http_listener::Limits {
                max_connections: limits.max_connections.min(64),
                per_address: limits.per_address.min(8),
                ..limits
            };
            let task = tokio::spawn(http_listener::serve(
                listener,
                router,
                scrapers,
                None,
                shutdown.clone(),
            ));
            tracing::info!(%address, "fleet metrics listening");
            Some((address, task))
        }
        None => None,
    };
    let metrics_address = metrics.as_ref().map(|(address, _)| *address);
    let http_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        http_listener::serve(listener, app, limits, http_tls, http_shutdown).await;
        if let Some((_, task)) = metrics {
            let _ = task.await;
        }
        // The broker stops on the same token; ingest stores what it already holds, and
        // the store closes after the last write.
        drop(broker);
        let _ = ingest.await;
        let _ = command_results.await;
        let _ = twin_reports.await;
        let _ = revocation_task.await;
        let _ = failure_reports.await;
        let _ = rollout_task.await;
        let _ = quote_task.await;
        let _ = attestation_task.await;
        let _ = renewal_task.await;
        let _ = retention_task.await;
        if let Some(membership) = membership {
            let _ = membership.task.await;
        }
        store.close().await;
        tracing::info!("fleet stopped; store closed");
    });
    tracing::info!(%http_address, scheme, "fleet api listening");
    Ok(RunningFleet {
        http_address,
        http_scheme: scheme,
        mqtt_address,
        metrics_address,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_file_line_column_and_field() {
        let text = "http_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n\
                    database_url = \"sqlite://x\"\nserver_cert = \"a\"\nserver_key = \"b\"\n\
                    manufacturer_ca = \"c\"\n[telemetry]\nkeep_days = \"forever\"\n";
        let error = FleetConfig::from_toml(text, Path::new("/etc/warden/fleet.toml"))
            .expect_err("a text where a number belongs");
        let ConfigError::Invalid { line, column, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!((*line, *column), (8, 13), "{error}");
        let shown = error.to_string();
        assert!(
            shown.starts_with("/etc/warden/fleet.toml:8:13: "),
            "{shown}"
        );

        let error = FleetConfig::from_toml("http_listen = 1\nbogus = 2\n", Path::new("f.toml"))
            .expect_err("unknown field");
        assert!(error.to_string().contains("bogus"), "{error}");
    }

    /// The keys every config needs, on lines 1 to 6.
    const BASE: &str = "http_listen = \"127.0.0.1:8080\"\nmqtt_listen = \"127.0.0.1:8883\"\n\
                        database_url = \"sqlite://x\"\nserver_cert = \"a\"\nserver_key = \"b\"\n\
                        manufacturer_ca = \"c\"\n";

    /// The error `text` gives, as shown, with its line and column.
    fn refused(text: &str) -> (String, usize, usize) {
        let error = FleetConfig::from_toml(text, Path::new("fleet.toml")).expect_err("refused");
        let ConfigError::Invalid { line, column, .. } = &error else {
            panic!("{error}");
        };
        (error.to_string(), *line, *column)
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = FleetConfig::load(Path::new("/nonexistent/fleet.toml")).expect_err("no file");
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/fleet.toml: "),
            "{error}"
        );
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let (shown, line, column) = refused(&format!("{BASE}[rollouts\ntick_ms = 5\n"));
        assert_eq!(line, 7, "{shown}");
        assert!(column > 0, "{shown}");
        assert!(shown.starts_with("fleet.toml:7:"), "{shown}");
    }

    #[test]
    fn value_errors_name_the_file_line_and_field() {
        let good_hash = "ab".repeat(32);
        // A token hash that is not hex: the line of that token's sha256.
        let (shown, line, column) = refused(&format!(
            "{BASE}[[api.tokens]]\nname = \"ok\"\nrole = \"viewer\"\nsha256 = \"{good_hash}\"\n\
             [[api.tokens]]\nname = \"ops\"\nrole = \"operator\"\nsha256 = \"xyz\"\n"
        ));
        assert_eq!(
            shown,
            "fleet.toml:14:10: api.tokens[1] (ops): sha256 is not 64 hex digits"
        );
        assert_eq!((line, column), (14, 10));

        let (shown, line, _) = refused(&format!(
            "{BASE}[images]\nvendor_roots = [\"00\", \"zz\"]\n"
        ));
        assert_eq!(line, 8, "{shown}");
        assert!(
            shown.contains(": images.vendor_roots[0] is not a P-256 public key: "),
            "{shown}"
        );

        let (shown, line, column) =
            refused(&BASE.replace("\"127.0.0.1:8883\"", "\"broker.example\""));
        assert_eq!(
            shown,
            "fleet.toml:2:15: mqtt_listen \"broker.example\" is not HOST:PORT"
        );
        assert_eq!((line, column), (2, 15));

        let (shown, line, _) = refused(&BASE.replace("sqlite://x", "mysql://db/fleet"));
        assert_eq!(line, 3, "{shown}");
        assert!(
            shown.contains("database_url \"mysql://db/fleet\""),
            "{shown}"
        );

        // A replica beside SQLite, and a replica that is not PostgreSQL: refused
        // naming the key, without the URL (it may hold a password).
        for (database, replica) in [
            ("sqlite://x", "postgres://reader:secret@replica/fleet"),
            ("postgres://db/fleet", "sqlite://secret"),
        ] {
            let (shown, line, _) = refused(&BASE.replace(
                "database_url = \"sqlite://x\"",
                &format!("database_url = \"{database}\"\ndatabase_replica_url = \"{replica}\""),
            ));
            assert_eq!(line, 4, "{shown}");
            assert!(shown.contains("database_replica_url needs"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
        let config = FleetConfig::from_toml(
            &BASE.replace(
                "database_url = \"sqlite://x\"",
                "database_url = \"postgres://db/fleet\"\n\
                 database_replica_url = \"postgres://replica/fleet\"",
            ),
            Path::new("fleet.toml"),
        )
        .expect("a PostgreSQL replica of a PostgreSQL database");
        assert_eq!(
            config.database_replica_url.as_deref(),
            Some("postgres://replica/fleet")
        );
    }

    #[test]
    fn broker_limits_are_read_and_checked_naming_file_line_and_field() {
        let config = FleetConfig::from_toml(
            &format!("{BASE}[broker]\nmax_connections = 20000\nconnect_timeout_secs = 5\n"),
            Path::new("fleet.toml"),
        )
        .expect("valid");
        assert_eq!(config.broker.max_connections, 20_000);
        assert_eq!(config.broker.connect_timeout_secs, 5);
        assert_eq!(
            config.broker.max_pending, 1_024,
            "the others keep their default"
        );

        let (shown, line, column) = refused(&format!(
            "{BASE}[broker]\nmax_pending = 64\nmax_pending_per_address = 65\n"
        ));
        assert_eq!(
            shown,
            "fleet.toml:9:27: broker.max_pending_per_address (65) must not exceed \
             broker.max_pending (64)"
        );
        assert_eq!((line, column), (9, 27));
        let (shown, line, _) =
            refused(&format!("{BASE}[broker]\ntls_handshake_timeout_secs = 0\n"));
        assert_eq!(line, 8, "{shown}");
        assert!(
            shown.ends_with("broker.tls_handshake_timeout_secs must be at least 1"),
            "{shown}"
        );
        let (shown, line, _) = refused(&format!("{BASE}[broker]\nmax_clients = 5\n"));
        assert_eq!(line, 8, "{shown}");
        assert!(shown.contains("max_clients"), "{shown}");
    }

    #[test]
    fn cross_field_errors_name_the_line_of_the_field_to_change() {
        // The API and the broker on one port.
        let (shown, line, _) = refused(&BASE.replace("127.0.0.1:8883", "127.0.0.1:8080"));
        assert_eq!(line, 2, "{shown}");
        assert!(
            shown.contains("http_listen and mqtt_listen are both \"127.0.0.1:8080\""),
            "{shown}"
        );
        // Port 0 on both is two free ports.
        let any = BASE
            .replace("127.0.0.1:8883", "127.0.0.1:0")
            .replace("127.0.0.1:8080", "127.0.0.1:0");
        FleetConfig::from_toml(&any, Path::new("fleet.toml")).expect("two free ports");

        // Trust that would lapse between two scheduled challenges.
        let (shown, line, column) = refused(&format!(
            "{BASE}[rollouts]\nattestation_interval_secs = 600\nattestation_valid_secs = 600\n"
        ));
        assert_eq!((line, column), (9, 26), "{shown}");
        assert!(
            shown.contains("rollouts.attestation_valid_secs (600) must exceed"),
            "{shown}"
        );
    }

    #[test]
    fn anonymous_access_is_refused_off_loopback_naming_file_and_field() {
        let anonymous = "[api]\nanonymous_role = \"viewer\"\n";
        FleetConfig::from_toml(&format!("{BASE}{anonymous}"), Path::new("fleet.toml"))
            .expect("loopback");
        for listen in ["[::1]:8080", "localhost:8080", "127.0.0.2:8080"] {
            let text = BASE.replace("127.0.0.1:8080", listen);
            FleetConfig::from_toml(&format!("{text}{anonymous}"), Path::new("fleet.toml"))
                .unwrap_or_else(|error| panic!("{listen}: {error}"));
        }
        for listen in [
            "0.0.0.0:8080",
            "192.0.2.7:8080",
            "[::]:8080",
            "fleet.example:8080",
        ] {
            let text = BASE.replace("127.0.0.1:8080", listen);
            let (shown, line, column) = refused(&format!("{text}{anonymous}"));
            assert_eq!((line, column), (8, 18), "{shown}");
            assert!(
                shown.starts_with("fleet.toml:8:18: api.anonymous_role is only allowed"),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_certificate_file_that_cannot_be_opened_is_named_with_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.toml");
        for name in ["a", "b"] {
            std::fs::write(dir.path().join(name), "-").expect("write");
        }
        let text = BASE
            .replace("\"a\"", &format!("{:?}", dir.path().join("a")))
            .replace("\"b\"", &format!("{:?}", dir.path().join("b")))
            .replace("\"c\"", &format!("{:?}", dir.path().join("missing-ca.pem")));
        std::fs::write(&path, text).expect("write");
        let error = FleetConfig::load(&path).expect_err("no CA file");
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("{}:6:19: manufacturer_ca ", path.display())),
            "{shown}"
        );
        assert!(shown.contains("missing-ca.pem"), "{shown}");
    }
}
