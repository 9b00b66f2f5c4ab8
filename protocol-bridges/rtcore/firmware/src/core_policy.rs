//! The policy on the core: bundle upload, verification against the baked-in vendor
//! root, and the decision for every request. Deny by default: until a bundle has
//! verified here, every request is refused.

use warden_keychain::RootKey;
use warden_modbus::pdu::Request;
use warden_policy::bundle::{BundleError, BundleTrust, ProductId, verify_bundle};
use warden_policy::tables::CoreTables;
use warden_policy::{BridgeId, ModbusRequest, RateState, Source, Verdict, evaluate};
use warden_rtcore_mailbox::{BundleRefusal, MAX_BUNDLE_LEN, Outcome, RequestSource};

include!(concat!(env!("OUT_DIR"), "/trust.rs"));

/// Rate-limit buckets the core keeps (8 bytes each); a policy needing more has its
/// rate-limited writes denied (`rate-state-too-small`).
pub const RATE_SLOTS: usize = 256;

/// A bundle being uploaded in chunks.
struct Upload {
    len: usize,
    received: usize,
}

/// Everything the core knows about policy.
pub struct CorePolicy {
    roots: heapless::Vec<RootKey, 1>,
    product: Option<ProductId>,
    tables: CoreTables,
    rate: RateState<[u64; RATE_SLOTS]>,
    version: Option<u64>,
    upload: Option<Upload>,
    buffer: [u8; MAX_BUNDLE_LEN],
}

impl CorePolicy {
    /// No policy yet; the vendor root and product are the ones baked in at build time.
    pub const fn new() -> Self {
        Self {
            roots: heapless::Vec::new(),
            product: None,
            tables: CoreTables::new(),
            rate: RateState::new(),
            version: None,
            upload: None,
            buffer: [0; MAX_BUNDLE_LEN],
        }
    }

    /// Installs the baked-in trust anchors; logs what the core trusts.
    pub fn install_trust(&mut self) {
        self.product = ProductId::new(PRODUCT);
        match VENDOR_ROOT
            .as_ref()
            .map(|key| RootKey::from_public_key(key))
        {
            Some(Ok(root)) => {
                defmt::info!(
                    "vendor root {:02x} trusted for product {=str}",
                    root.id().as_bytes(),
                    PRODUCT
                );
                let _ = self.roots.push(root);
            }
            Some(Err(_)) => defmt::error!(
                "the baked-in vendor root is not a P-256 key: every bundle will be refused"
            ),
            None => defmt::warn!("no vendor root baked in: every bundle will be refused"),
        }
    }

    /// Version of the applied bundle, if any.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Starts an upload of `len` bytes.
    pub fn begin(&mut self, len: u32) -> Result<(), BundleRefusal> {
        self.upload = None;
        let len = len as usize;
        if len == 0 || len > MAX_BUNDLE_LEN {
            return Err(BundleRefusal::TooLarge);
        }
        self.upload = Some(Upload { len, received: 0 });
        Ok(())
    }

    /// Stores one chunk; it must follow the previous one.
    pub fn chunk(&mut self, offset: u32, data: &[u8]) -> Result<(), BundleRefusal> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(BundleRefusal::OutOfOrder);
        };
        let end = upload.received + data.len();
        if offset as usize != upload.received || end > upload.len {
            self.upload = None;
            return Err(BundleRefusal::OutOfOrder);
        }
        self.buffer[upload.received..end].copy_from_slice(data);
        upload.received = end;
        Ok(())
    }

    /// Verifies the uploaded bundle and applies it. A refused bundle leaves the
    /// previous policy (or none) in force.
    pub fn commit(&mut self) -> Result<u64, BundleRefusal> {
        let upload = self.upload.take().ok_or(BundleRefusal::OutOfOrder)?;
        if upload.received != upload.len {
            return Err(BundleRefusal::Incomplete);
        }
        let product = self.product.ok_or(BundleRefusal::WrongProduct)?;
        let trust = BundleTrust {
            roots: &self.roots,
            revoked: &[],
            product,
            min_version: self.version.unwrap_or(0),
        };
        let verified = verify_bundle(&self.buffer[..upload.len], &trust).map_err(refusal)?;
        // Verified: only now do the tables change. A signed body that does not decode
        // (a tooling bug, or tables too large for the core) leaves no policy at all.
        if self.tables.decode_from(verified.body).is_err() {
            self.version = None;
            return Err(BundleRefusal::Tables);
        }
        self.version = Some(verified.header.version);
        Ok(verified.header.version)
    }

    /// Decides `request` to `unit` of the bridge named `bridge` from `source`.
    pub fn check(
        &mut self,
        bridge: &str,
        unit: u8,
        source: RequestSource,
        request: &Request,
        now_ms: u64,
    ) -> Result<(), Outcome<'static>> {
        if self.version.is_none() {
            return Err(Outcome::NoPolicy);
        }
        let tables = self.tables.tables();
        let Some(bridge) = tables.bridge_id(bridge) else {
            return Err(Outcome::Denied {
                reason: warden_policy::Reason::UnknownBridge.code(),
                rule: None,
            });
        };
        let mut values = [0u16; warden_modbus::MAX_WRITE_BITS as usize];
        let mut count = 0;
        for (slot, value) in values.iter_mut().zip(request.write_values()) {
            *slot = value;
            count += 1;
        }
        let policy_request = warden_policy::Request::Modbus(ModbusRequest {
            bridge: BridgeId(bridge.0),
            unit,
            function: request.function().code(),
            address: request.address(),
            count: request.count(),
            values: &values[..count],
            source: match source {
                RequestSource::Poll => Source::Poll,
                RequestSource::Cloud => Source::Cloud,
                RequestSource::Facade => Source::Facade,
            },
        });
        let decision = evaluate(&tables, &mut self.rate, &policy_request, now_ms);
        if decision.verdict == Verdict::Allow {
            Ok(())
        } else {
            Err(Outcome::Denied {
                reason: decision.reason.code(),
                rule: decision.rule.map(|rule| rule.0),
            })
        }
    }
}

fn refusal(error: BundleError) -> BundleRefusal {
    match error {
        BundleError::WrongProduct => BundleRefusal::WrongProduct,
        BundleError::Rollback | BundleError::VersionReused => BundleRefusal::Rollback,
        BundleError::BodyHashMismatch => BundleRefusal::BodyHashMismatch,
        BundleError::Certificate(_) => BundleRefusal::Certificate,
        BundleError::SignatureInvalid => BundleRefusal::SignatureInvalid,
        BundleError::Tables(_) => BundleRefusal::Tables,
        BundleError::TooLarge => BundleRefusal::TooLarge,
        _ => BundleRefusal::Malformed,
    }
}
