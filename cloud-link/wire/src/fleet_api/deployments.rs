//! Images and staged deployments: the upload's record, the deployment request, and a
//! deployment with its history.

use serde::{Deserialize, Serialize};

/// Path of the image collection (`GET`, `POST` with the signed image's bytes).
pub const IMAGES_PATH: &str = "/api/v1/images";
/// Where deltas are uploaded and listed ([`DeltaRecord`]).
pub const DELTAS_PATH: &str = "/api/v1/deltas";

/// Path of the deployment collection (`GET`, `POST` with [`DeploymentRequest`]).
pub const DEPLOYMENTS_PATH: &str = "/api/v1/deployments";

/// Path of one deployment ([`StoredDeployment`]).
pub fn deployment_path(id: &str) -> String {
    format!("{DEPLOYMENTS_PATH}/{id}")
}

/// An uploaded, verified image (`GET`/`POST /api/v1/images`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// SHA-256 of the whole image file, hex (its download name).
    pub sha256: String,
    /// Product (from the signed header).
    pub product: String,
    /// Semantic version (from the signed header).
    pub version: String,
    /// Size in bytes.
    pub size: i64,
    /// Anti-rollback counter.
    pub security_counter: i64,
    /// The measurement a device's boot records for it, hex.
    pub measurement: String,
    /// When it was uploaded.
    pub uploaded_ms: i64,
}

/// An uploaded, verified delta (`GET`/`POST /api/v1/deltas`): `warden image delta`'s
/// file, turning the image `base_sha256` into the image `result_sha256`, both uploaded
/// images of the same product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRecord {
    /// SHA-256 of the whole delta file, hex (its download name, `/deltas/{sha256}`).
    pub sha256: String,
    /// Product (from the signed header).
    pub product: String,
    /// SHA-256 of the image it applies to, hex.
    pub base_sha256: String,
    /// SHA-256 of the image it produces, hex.
    pub result_sha256: String,
    /// The result's semantic version.
    pub result_version: String,
    /// Size of the delta file in bytes.
    pub size: i64,
    /// When it was uploaded.
    pub uploaded_ms: i64,
}

/// How big one wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WaveSize {
    /// A percentage (1..=100) of the group's devices, rounded up.
    Percent(u32),
    /// A number of devices (at least 1).
    Count(u32),
}

/// A deployment request (`POST /api/v1/deployments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// SHA-256 of an uploaded image.
    pub image: String,
    /// The target group of the image's product.
    pub group: String,
    /// Wave sizes in order; devices left after the last wave join it. Default: one
    /// wave of everything.
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSize>,
    /// Fraction (0..=1] of a wave's offered devices that must confirm the update
    /// before the next wave starts. Default 0.9.
    #[serde(default = "default_success")]
    pub success_threshold: f64,
    /// Fraction (0..=1] of a wave's offered devices failing, rolling back or crashing
    /// on the new version that halts the deployment. Default 0.2.
    #[serde(default = "default_failure")]
    pub failure_threshold: f64,
    /// Maintenance window start, ms since the epoch (waves start only inside it).
    #[serde(default)]
    pub window_start_ms: Option<i64>,
    /// Maintenance window end.
    #[serde(default)]
    pub window_end_ms: Option<i64>,
}

fn default_waves() -> Vec<WaveSize> {
    vec![WaveSize::Percent(100)]
}
fn default_success() -> f64 {
    0.9
}
fn default_failure() -> f64 {
    0.2
}

impl DeploymentRequest {
    /// A request for `image` to `group` with the defaults: one wave of everything,
    /// thresholds 0.9 and 0.2, no maintenance window.
    pub fn new(image: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            group: group.into(),
            waves: default_waves(),
            success_threshold: default_success(),
            failure_threshold: default_failure(),
            window_start_ms: None,
            window_end_ms: None,
        }
    }

    /// Checks the numbers; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidDeployment> {
        if self.waves.is_empty() {
            return Err(InvalidDeployment::NoWaves);
        }
        for (index, wave) in self.waves.iter().enumerate() {
            match *wave {
                WaveSize::Percent(percent) if !(1..=100).contains(&percent) => {
                    return Err(InvalidDeployment::WavePercent { index, percent });
                }
                WaveSize::Count(0) => return Err(InvalidDeployment::WaveCount { index }),
                _ => {}
            }
        }
        for (field, value) in [
            ("success_threshold", self.success_threshold),
            ("failure_threshold", self.failure_threshold),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(InvalidDeployment::Threshold { field, value });
            }
        }
        if let (Some(start), Some(end)) = (self.window_start_ms, self.window_end_ms)
            && end <= start
        {
            return Err(InvalidDeployment::Window);
        }
        Ok(())
    }
}

/// What is wrong with a [`DeploymentRequest`]'s numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDeployment {
    /// `waves` is empty.
    #[error("waves: at least one wave is needed")]
    NoWaves,
    /// A percentage wave outside 1..=100.
    #[error("waves[{index}].percent {percent} is outside 1..=100")]
    WavePercent {
        /// Which wave.
        index: usize,
        /// Its percentage.
        percent: u32,
    },
    /// A wave of zero devices.
    #[error("waves[{index}].count must be at least 1")]
    WaveCount {
        /// Which wave.
        index: usize,
    },
    /// A threshold outside (0, 1].
    #[error("{field} {value} is outside (0, 1]")]
    Threshold {
        /// `success_threshold` or `failure_threshold`.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The maintenance window ends before it starts.
    #[error("window_end_ms must be after window_start_ms")]
    Window,
}

impl InvalidDeployment {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::NoWaves | Self::WavePercent { .. } | Self::WaveCount { .. } => "waves",
            Self::Threshold { field, .. } => field,
            Self::Window => "window_end_ms",
        }
    }
}

/// One state change of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    /// Order within the deployment, from 0.
    pub seq: i64,
    /// When.
    pub ts_ms: i64,
    /// `created`, `wave-started`, `wave-succeeded`, `halted`, `completed`.
    pub kind: String,
    /// The wave it concerns.
    pub wave: i64,
    /// Details.
    pub detail: String,
}

/// A member device and its latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentMember {
    /// Device.
    pub device_id: String,
    /// Its wave.
    pub wave: i64,
    /// `pending`, `offered`, `withheld`, or the device's last update status.
    pub state: String,
    /// Details of that state.
    pub detail: String,
    /// When it changed.
    pub updated_ms: Option<i64>,
}

/// A deployment with its history (`GET /api/v1/deployments/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDeployment {
    /// ID.
    pub id: String,
    /// Product.
    pub product: String,
    /// Target group.
    pub group: String,
    /// Image.
    pub image_sha256: String,
    /// The image's version.
    pub version: String,
    /// The request as accepted (a [`DeploymentRequest`] as JSON).
    pub spec: serde_json::Value,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_ms: i64,
    /// The last event's kind.
    pub state: String,
    /// The last event's wave.
    pub wave: i64,
    /// Every state change, in order.
    pub events: Vec<DeploymentEvent>,
    /// Members and their states, by wave then device.
    pub members: Vec<DeploymentMember>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let good: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"Production"}"#).expect("defaults");
        assert!(good.validate().is_ok());
        assert_eq!(good, DeploymentRequest::new("x", "Production"));
        let bad: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"g","waves":[{"percent":0}]}"#)
                .expect("parses");
        assert_eq!(
            bad.validate().map_err(|e| e.to_string()),
            Err("waves[0].percent 0 is outside 1..=100".into())
        );
        let bad: DeploymentRequest =
            serde_json::from_str(r#"{"image":"x","group":"g","failure_threshold":1.5}"#)
                .expect("parses");
        assert!(
            bad.validate()
                .expect_err("refused")
                .to_string()
                .starts_with("failure_threshold")
        );
    }

    #[test]
    fn each_invalid_number_names_its_field() {
        let mut request = DeploymentRequest::new("ab", "Production");
        assert_eq!(request.validate(), Ok(()));
        request.waves = vec![WaveSize::Count(1), WaveSize::Percent(101)];
        let error = request.validate().expect_err("101 %");
        assert_eq!(
            (error.field(), error.to_string().as_str()),
            ("waves", "waves[1].percent 101 is outside 1..=100")
        );
        request.waves = vec![WaveSize::Percent(50)];
        request.failure_threshold = 0.0;
        let error = request.validate().expect_err("threshold 0");
        assert_eq!(
            (error.field(), error.to_string().as_str()),
            ("failure_threshold", "failure_threshold 0 is outside (0, 1]")
        );
        request.failure_threshold = 0.2;
        request.window_start_ms = Some(10);
        request.window_end_ms = Some(10);
        assert_eq!(
            request.validate().map_err(|e| e.field()),
            Err("window_end_ms")
        );
    }
}
