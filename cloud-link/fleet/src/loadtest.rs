//! Shared parts of the fleet's load tools (`benches/fleet.rs` and hil's
//! `fleet-loadgen`), behind the `loadtest` feature: a throwaway PKI (fleet CA and
//! server certificate, a manufacturer CA issuing one certificate per device), the
//! `warden-fleet` binary as a child process on SQLite with its embedded broker, device
//! registration through the API, MQTT options for mutual TLS, pluton-format quotes
//! signed with a device's key, and a process's RSS and CPU time from `/proc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use tokio::io::AsyncBufReadExt as _;
use warden_wire::fleet_api::{DEVICES_PATH, PRODUCTS_PATH, ProductRequest, RegisterRequest};
use warden_wire::tls::{ClientIdentity, client_config};
use warden_wire::topics::{PROTOCOL_VERSION, Reading, TELEMETRY_STREAM, TelemetryBatch};

/// The API token the tools' fleet config grants the `admin` role.
pub const TOKEN: &str = "loadtest-token";

/// Certificates and keys of one load run, as files in one directory: `fleet-ca.pem`,
/// `server.pem`/`.key`, `maker-ca.pem`, and `{device}.pem`/`.key` per device.
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
    maker: Issuer<'static, KeyPair>,
    /// The manufacturer CA's certificate, PEM (a product's `manufacturer_ca_pem`).
    pub maker_pem: String,
}

fn new_ca(name: &str) -> anyhow::Result<(Issuer<'static, KeyPair>, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    server: bool,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let names = if server {
        vec!["127.0.0.1".to_owned()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Creates the CAs and the fleet's server certificate in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let (fleet_ca, fleet_ca_pem) = new_ca("load fleet CA")?;
        let (server_cert, server_key) = issue(&fleet_ca, "fleet", true)?;
        let (maker, maker_pem) = new_ca("load maker CA")?;
        for (name, text) in [
            ("fleet-ca.pem", &fleet_ca_pem),
            ("server.pem", &server_cert),
            ("server.key", &server_key),
            ("maker-ca.pem", &maker_pem),
        ] {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("cannot write {}", dir.join(name).display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            maker,
            maker_pem,
        })
    }

    /// Issues `device`'s client certificate (CN = ID) from the manufacturer CA, writes
    /// it and its key, and returns the certificate PEM.
    pub fn issue_device(&self, device: &str) -> anyhow::Result<String> {
        let (cert, key) = issue(&self.maker, device, false)?;
        std::fs::write(self.dir.join(format!("{device}.pem")), &cert)?;
        std::fs::write(self.dir.join(format!("{device}.key")), key)?;
        Ok(cert)
    }

    /// The private key of `device`, PEM.
    pub fn device_key_pem(&self, device: &str) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{device}.key"));
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// MQTT options for `device` connecting to the fleet's broker on `port` over
    /// mutual TLS 1.3 with its own certificate.
    pub fn mqtt_options(&self, device: &str, port: u16) -> anyhow::Result<MqttOptions> {
        let identity = ClientIdentity::from_pem_files(
            &self.dir.join(format!("{device}.pem")),
            &self.dir.join(format!("{device}.key")),
        )?;
        let tls = client_config(&self.dir.join("fleet-ca.pem"), identity)?;
        let mut options = MqttOptions::new(device, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        Ok(options)
    }
}

/// The load's telemetry batch number `seq`: ten pressure readings (`line1/p0..p9`),
/// stamped with `seq` after a fixed time.
pub fn telemetry_batch(seq: u64) -> TelemetryBatch {
    TelemetryBatch {
        v: PROTOCOL_VERSION,
        stream: TELEMETRY_STREAM.into(),
        epoch: 1,
        seq,
        readings: (0..10)
            .map(|r| {
                Reading::number(
                    format!("line1/p{r}"),
                    f64::from(r),
                    "bar".into(),
                    1_700_000_000_000 + seq,
                )
            })
            .collect(),
    }
}

/// RSS and CPU time of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// [`Usage`] of process `pid` from `/proc/PID/status` and `/proc/PID/stat` (zeros if
/// it is gone).
pub fn process_usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let cpu_seconds = ticks as f64 / 100.0;
    Usage {
        rss_kib,
        cpu_seconds,
    }
}

/// The `warden-fleet` binary running as a child process (killed when dropped).
pub struct FleetProcess {
    child: tokio::process::Child,
    /// Its process ID.
    pub pid: u32,
    /// `host:port` of its HTTP API.
    pub http: String,
    /// Its broker's port on 127.0.0.1.
    pub mqtt_port: u16,
}

impl FleetProcess {
    /// Writes `fleet.toml` in the PKI's directory (SQLite `fleet.db` there, loopback
    /// ports chosen by the system, `extra_toml` — top-level keys first, then sections
    /// — and [`TOKEN`] as `admin`) and starts `binary` on it; returns once it printed
    /// its addresses. Started again on the same directory it reopens the same database.
    pub async fn start(binary: &Path, pki: &Pki, extra_toml: &str) -> anyhow::Result<Self> {
        let database_url = format!("sqlite://{}/fleet.db", pki.dir.display());
        Self::start_on(binary, pki, "fleet", &database_url, extra_toml).await
    }

    /// [`FleetProcess::start`] on `database_url` (several instances may share a
    /// PostgreSQL), with its config in `{name}.toml`.
    pub async fn start_on(
        binary: &Path,
        pki: &Pki,
        name: &str,
        database_url: &str,
        extra_toml: &str,
    ) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "no warden-fleet binary at {} (build it: cargo build --release -p warden-fleet)",
                binary.display()
            );
        }
        let d = pki.dir.display();
        let config = format!(
            "http_listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\n\
             database_url = \"{database_url}\"\nserver_cert = \"{d}/server.pem\"\n\
             server_key = \"{d}/server.key\"\nmanufacturer_ca = \"{d}/maker-ca.pem\"\n\
             {extra_toml}\n\
             [api]\ntokens = [{{ name = \"load\", role = \"admin\", sha256 = \"{hash}\" }}]\n",
            hash = crate::auth::hash_token(TOKEN),
        );
        let path = pki.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the fleet exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut http, mut mqtt_port) = (String::new(), 0u16);
        while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the fleet printed no address within 60 s")??
        {
            if let Some(v) = line.strip_prefix("fleet dashboard: http://") {
                http = v.trim_end_matches('/').to_owned();
            }
            if let Some(v) = line.strip_prefix("fleet broker:    mqtts://") {
                mqtt_port = v
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                break;
            }
        }
        if http.is_empty() || mqtt_port == 0 {
            bail!("the fleet did not print its addresses");
        }
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            http,
            mqtt_port,
        })
    }

    /// Its RSS and CPU time now.
    pub fn usage(&self) -> Usage {
        process_usage(self.pid)
    }

    /// Kills it and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The fleet's HTTP API with the [`TOKEN`].
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// The API at `http` (`host:port`).
    pub fn new(http: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: format!("http://{http}"),
        }
    }

    /// The HTTP client (keep-alive connections are pooled).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `http://host:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` (JSON, or raw bytes for `Err`); the status and the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: Result<serde_json::Value, Vec<u8>>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let request = self.client.post(self.url(path)).bearer_auth(TOKEN);
        let request = match body {
            Ok(json) => request.json(&json),
            Err(bytes) => request.body(bytes),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }

    /// Creates `product` with the PKI's manufacturer CA.
    pub async fn create_product(&self, product: &str, pki: &Pki) -> anyhow::Result<()> {
        let (status, body) = self
            .post(
                PRODUCTS_PATH,
                Ok(serde_json::to_value(ProductRequest {
                    name: product.to_owned(),
                    manufacturer_ca_pem: pki.maker_pem.clone(),
                })?),
            )
            .await?;
        if !matches!(status, 200 | 201) {
            bail!("product {product}: {status} {body}");
        }
        Ok(())
    }

    /// Issues a certificate for each of `devices` and registers it in `product`'s
    /// `Production` group, a few registrations at a time.
    pub async fn register_devices(
        &self,
        pki: &Pki,
        product: &str,
        devices: &[String],
    ) -> anyhow::Result<()> {
        const IN_FLIGHT: usize = 8;
        let mut tasks = tokio::task::JoinSet::new();
        for device in devices {
            let certificate_pem = pki.issue_device(device)?;
            let body = serde_json::to_value(RegisterRequest {
                device_id: device.clone(),
                serial: device.clone(),
                product: product.to_owned(),
                group: warden_wire::fleet_api::DEFAULT_GROUP.to_owned(),
                certificate_pem,
                image_version: "1.0.0".to_owned(),
            })?;
            let (api, device) = (self.clone(), device.clone());
            tasks.spawn(async move {
                let (status, answer) = api.post(DEVICES_PATH, Ok(body)).await?;
                if !matches!(status, 200 | 201) {
                    bail!("registering {device}: {status} {answer}");
                }
                Ok(())
            });
            while tasks.len() >= IN_FLIGHT {
                if let Some(done) = tasks.join_next().await {
                    done??;
                }
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// Signs pluton `WPQ1` quotes with a device's own key (the key pluton would hold), so a
/// simulated device can answer the fleet's attestation challenges.
pub struct QuoteSigner {
    public_key: [u8; 65],
    key: Arc<dyn rustls::sign::SigningKey>,
}

impl QuoteSigner {
    /// From the device's private key, PEM (PKCS#8 P-256).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        use rustls_pki_types::pem::PemObject as _;
        let pair = KeyPair::from_pem(pem)?;
        let public_key = pair
            .public_key_raw()
            .try_into()
            .map_err(|_| anyhow::anyhow!("not an uncompressed P-256 public key"))?;
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("device key: {e}"))?;
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| anyhow::anyhow!("device key: {e}"))?;
        Ok(Self { public_key, key })
    }

    /// A quote over `nonce` whose image register is `image_register` (the other
    /// registers and the counters zero, firmware version 7).
    pub fn quote(&self, nonce: &[u8], image_register: [u8; 32]) -> anyhow::Result<Vec<u8>> {
        let device_id = warden_pluton::DeviceId::of_public_key(&self.public_key);
        let mut body = warden_pluton::quote::QUOTE_MAGIC.to_vec();
        body.extend([
            warden_pluton::quote::QUOTE_VERSION,
            8,
            8,
            u8::try_from(nonce.len())?,
        ]);
        body.extend(device_id.0);
        body.extend(7u32.to_le_bytes());
        body.extend(nonce);
        body.extend(image_register);
        body.extend([0u8; 32 * 7]);
        body.extend([0u8; 8 * 8]);
        let signer = self
            .key
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .context("the key cannot sign ECDSA P-256 SHA-256")?;
        let message = [warden_pluton::quote::QUOTE_SIGNING_PREFIX, &body].concat();
        let der = signer.sign(&message).map_err(|e| anyhow::anyhow!("{e}"))?;
        body.extend(raw_signature(&der)?);
        Ok(body)
    }
}

/// An ASN.1 `SEQUENCE { r INTEGER, s INTEGER }` as pluton's 64-byte `r ‖ s`.
fn raw_signature(der: &[u8]) -> anyhow::Result<[u8; 64]> {
    let mut out = [0u8; 64];
    let mut at = 2 + usize::from(der.get(1).is_some_and(|b| b & 0x80 != 0));
    for half in out.chunks_mut(32) {
        if der.get(at) != Some(&0x02) {
            bail!("malformed ECDSA signature");
        }
        let len = usize::from(*der.get(at + 1).context("short signature")?);
        let value = der.get(at + 2..at + 2 + len).context("short signature")?;
        let value = &value[value.len().saturating_sub(32)..];
        half[32 - value.len()..].copy_from_slice(value);
        at += 2 + len;
    }
    Ok(out)
}
