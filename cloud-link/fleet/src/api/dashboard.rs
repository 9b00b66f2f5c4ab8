//! The dashboard: its pages and assets, and the read-only endpoints they call.
//!
//! The pages are one static shell (`assets/dashboard.html`) with one script and one
//! style sheet, all embedded in the binary; the script reads `/api/v1` with the token
//! the user typed into its login form (kept in `sessionStorage`, sent as a bearer
//! header). The shell holds no data, so it is served without a token; every number
//! comes from the API, where the viewer role is needed.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use warden_wire::fleet_api::{
    Connectivity, DashboardDevice, DeploymentProgress, DeviceCertificate, DeviceDetail,
    DevicePageQuery, DeviceRevocationList, FleetSummary, ReportGroupsQuery, SignatureGroup,
    StoredDeployment, WaveProgress,
};
use warden_wire::topics::{MAX_POINT_DECIMALS, TwinReported, UpdateState};
use warden_wire::validity::CertificateStanding;

use super::error::ApiError;
use super::state::ApiState;
use crate::clock::now_ms;

const PAGE_HTML: &str = include_str!("../../assets/dashboard.html");
const SCRIPT_JS: &str = include_str!("../../assets/dashboard.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard.css");

/// The pages' policy: only this origin's script, style and API; no inline script or
/// style, no plugins, no framing, no form submission, no other network.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Recent failure reports shown on a device page.
const DEVICE_PAGE_REPORTS: i64 = 20;

/// The dashboard's pages and assets (no token needed: they hold no data).
pub(super) fn pages() -> Router<ApiState> {
    Router::new()
        .route("/", get(page))
        .route("/devices/{id}", get(page))
        .route("/deployments", get(page))
        .route("/reports", get(page))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style))
}

/// The dashboard's read-only endpoints (viewer role; authorised by the API's layer).
pub(super) fn api_routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/dashboard/summary", get(summary))
        .route("/api/v1/dashboard/devices", get(devices))
        .route("/api/v1/dashboard/devices/{id}", get(device))
        .route("/api/v1/dashboard/deployments", get(deployments))
        .route("/api/v1/dashboard/report-groups", get(report_groups))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// The dashboard's name for a deployment whose last event is `kind`.
pub fn deployment_state(kind: &str) -> &'static str {
    match kind {
        "halted" => "halted",
        "completed" => "complete",
        _ => "advancing",
    }
}

/// The progress of `deployment`, given per wave the devices that reported a crash on
/// its version since that wave started (as the rollout engine counts them).
pub fn deployment_progress(
    deployment: &StoredDeployment,
    crashed_by_wave: &BTreeMap<i64, BTreeSet<String>>,
) -> DeploymentProgress {
    let waves = deployment
        .members
        .iter()
        .map(|m| m.wave)
        .max()
        .map_or(0, |w| w + 1);
    let no_crashes = BTreeSet::new();
    let mut out = Vec::new();
    for wave in 0..waves {
        let crashed_devices = crashed_by_wave.get(&wave).unwrap_or(&no_crashes);
        let mut progress = WaveProgress {
            wave,
            status: wave_status(deployment, wave).to_owned(),
            targeted: 0,
            offered: 0,
            withheld: 0,
            in_progress: 0,
            succeeded: 0,
            failed: 0,
            crashed: 0,
        };
        for member in deployment.members.iter().filter(|m| m.wave == wave) {
            progress.targeted += 1;
            match member.state.as_str() {
                "pending" => continue,
                "withheld" => {
                    progress.withheld += 1;
                    continue;
                }
                _ => progress.offered += 1,
            }
            let state = member.state.as_str();
            if crashed_devices.contains(&member.device_id) {
                progress.crashed += 1;
            } else if state == UpdateState::Failed.as_str()
                || state == UpdateState::RolledBack.as_str()
            {
                progress.failed += 1;
            } else if state == UpdateState::Confirmed.as_str() {
                progress.succeeded += 1;
            } else {
                progress.in_progress += 1;
            }
        }
        out.push(progress);
    }
    let last = deployment.events.last();
    let threshold = |name: &str| {
        deployment
            .spec
            .get(name)
            .and_then(serde_json::Value::as_f64)
    };
    DeploymentProgress {
        id: deployment.id.clone(),
        product: deployment.product.clone(),
        group: deployment.group.clone(),
        version: deployment.version.clone(),
        created_by: deployment.created_by.clone(),
        created_ms: deployment.created_ms,
        state: deployment_state(&deployment.state).to_owned(),
        last_event: deployment.state.clone(),
        detail: last.map(|e| e.detail.clone()).unwrap_or_default(),
        current_wave: deployment.wave,
        success_threshold: threshold("success_threshold"),
        failure_threshold: threshold("failure_threshold"),
        waves: out,
    }
}

fn wave_status(deployment: &StoredDeployment, wave: i64) -> &'static str {
    let happened = |kind: &str| {
        deployment
            .events
            .iter()
            .any(|e| e.wave == wave && e.kind == kind)
    };
    if happened("halted") {
        "halted"
    } else if happened("wave-succeeded") {
        "succeeded"
    } else if happened("wave-started") {
        "running"
    } else {
        "pending"
    }
}

/// When each started wave of `deployment` began.
fn wave_starts(deployment: &StoredDeployment) -> BTreeMap<i64, i64> {
    deployment
        .events
        .iter()
        .filter(|e| e.kind == "wave-started")
        .map(|e| (e.wave, e.ts_ms))
        .collect()
}

async fn progress_of(
    state: &ApiState,
    deployment: &StoredDeployment,
) -> Result<DeploymentProgress, ApiError> {
    let mut crashed = BTreeMap::new();
    for (wave, started_ms) in wave_starts(deployment) {
        let devices = state
            .store
            .crashed_devices(&deployment.version, started_ms)
            .await?;
        crashed.insert(wave, devices.into_iter().collect::<BTreeSet<_>>());
    }
    Ok(deployment_progress(deployment, &crashed))
}

async fn all_progress(state: &ApiState) -> Result<Vec<DeploymentProgress>, ApiError> {
    let mut out = Vec::new();
    for id in state.store.deployment_ids().await? {
        if let Some(deployment) = state.store.deployment(&id).await? {
            out.push(progress_of(state, &deployment).await?);
        }
    }
    Ok(out)
}

/// The devices online on any fleet instance.
async fn online_ids(state: &ApiState) -> BTreeSet<String> {
    state
        .devices
        .online_device_ids()
        .await
        .into_iter()
        .collect()
}

async fn summary(State(state): State<ApiState>) -> Result<Json<FleetSummary>, ApiError> {
    let counts = state.store.fleet_counts().await?;
    let online = online_ids(&state).await;
    let mut connectivity = Connectivity {
        online: 0,
        offline: 0,
    };
    for row in state.store.device_rows().await? {
        if !row.registered || row.status == "revoked" {
            continue;
        }
        if online.contains(&row.device_id) {
            connectivity.online += 1;
        } else {
            connectivity.offline += 1;
        }
    }
    let progress = all_progress(&state).await?;
    let mut deployments_by_state: BTreeMap<String, i64> = ["advancing", "halted", "complete"]
        .iter()
        .map(|s| ((*s).to_owned(), 0))
        .collect();
    for deployment in &progress {
        *deployments_by_state
            .entry(deployment.state.clone())
            .or_default() += 1;
    }
    Ok(Json(FleetSummary {
        counts,
        connectivity,
        deployments_by_state,
        deployments_in_progress: progress
            .into_iter()
            .filter(|d| d.state == "advancing")
            .collect(),
    }))
}

/// Largest page of `GET /api/v1/dashboard/devices`.
pub const MAX_DEVICE_PAGE: i64 = 10_000;

async fn devices(
    State(state): State<ApiState>,
    Query(page): Query<DevicePageQuery>,
) -> Result<Json<Vec<DashboardDevice>>, ApiError> {
    let limit = super::paging::limit_within(page.limit, MAX_DEVICE_PAGE, MAX_DEVICE_PAGE)?;
    let offset = super::paging::offset_of(page.offset)?;
    let online = online_ids(&state).await;
    Ok(Json(
        state
            .store
            .device_page(&page.prefix, offset, limit)
            .await?
            .into_iter()
            .map(|row| DashboardDevice {
                online: online.contains(&row.device_id),
                row,
            })
            .collect(),
    ))
}

async fn device(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let registered = state.store.registered_device(&id).await?;
    let seen = state.store.seen_device(&id).await?;
    if registered.is_none() && seen.is_none() {
        return Err(ApiError::NotFound(format!("device {id} is not known")));
    }
    let reported = match state.store.twin(&id).await? {
        Some((_, Some(reported))) => Some(reported),
        _ => None,
    };
    let point_decimals = reported
        .as_deref()
        .map(point_decimals_of)
        .unwrap_or_default();
    let revocation_list = DeviceRevocationList::of(
        reported
            .as_deref()
            .and_then(|reported| TwinReported::decode(reported.as_bytes()).ok())
            .and_then(|twin| twin.revocation_list_sequence),
        state.store.newest_revocation_sequence().await?,
    );
    let certificate = match state.store.registered_certificate(&id).await? {
        Some(pem) => match device_certificate(&state, &id, &pem) {
            Some(mut certificate) => {
                certificate.renewal =
                    super::renewal::certificate_renewal(&state.store, &id).await?;
                Some(certificate)
            }
            None => None,
        },
        None => None,
    };
    Ok(Json(DeviceDetail {
        point_decimals,
        certificate,
        revocation_list: Some(revocation_list),
        online: online_ids(&state).await.contains(&id),
        latest: state.store.latest_values(&id).await?,
        reports: state
            .store
            .reports(Some(id.as_str()), DEVICE_PAGE_REPORTS)
            .await?,
        device_id: id,
        registered,
        seen,
    }))
}

/// The decimal places the device's reported twin sets for its points. The twin is the
/// device's word, so a setting outside `0..=MAX_POINT_DECIMALS` is left out (the page
/// then shows the value as read) and a twin that does not parse gives none.
fn point_decimals_of(reported: &str) -> BTreeMap<String, u8> {
    match TwinReported::decode(reported.as_bytes()) {
        Ok(twin) => twin
            .point_decimals
            .into_iter()
            .filter(|(_, decimals)| *decimals <= MAX_POINT_DECIMALS)
            .collect(),
        Err(error) => {
            tracing::debug!(%error, "stored reported twin does not parse");
            BTreeMap::new()
        }
    }
}

/// The validity of a registered device's certificate and the broker's last refusal
/// of it; `None` if the stored PEM does not parse (registration checked it).
fn device_certificate(state: &ApiState, device_id: &str, pem: &str) -> Option<DeviceCertificate> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let der = crate::enrollment::certificates_from_pem(pem).ok()?;
    let (_, cert) = X509Certificate::from_der(der.first()?).ok()?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now = now_ms() / 1000;
    let refusal = state.trust.last_refusal(device_id);
    Some(DeviceCertificate {
        not_before_ms: not_before.saturating_mul(1000),
        not_after_ms: not_after.saturating_mul(1000),
        standing: CertificateStanding::at(not_before, not_after, now)
            .as_str()
            .to_owned(),
        refused_ms: refusal.as_ref().map(|refusal| refusal.at_ms),
        refused_reason: refusal.map(|refusal| refusal.reason),
        renewal: None,
    })
}

async fn deployments(
    State(state): State<ApiState>,
) -> Result<Json<Vec<DeploymentProgress>>, ApiError> {
    Ok(Json(all_progress(&state).await?))
}

async fn report_groups(
    State(state): State<ApiState>,
    Query(query): Query<ReportGroupsQuery>,
) -> Result<Json<Vec<SignatureGroup>>, ApiError> {
    let since_ms = query
        .since_ms
        .unwrap_or_else(|| now_ms() - 7 * 24 * 3_600_000);
    let bucket_ms = query.bucket_ms.unwrap_or(3_600_000);
    if bucket_ms < 1_000 {
        return Err(ApiError::BadRequest(format!(
            "bucket_ms {bucket_ms} is below 1000"
        )));
    }
    Ok(Json(
        state.store.signature_groups(since_ms, bucket_ms).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_wire::fleet_api::{DeploymentEvent, DeploymentMember};

    fn member(device: &str, wave: i64, state: &str) -> DeploymentMember {
        DeploymentMember {
            device_id: device.into(),
            wave,
            state: state.into(),
            detail: String::new(),
            updated_ms: None,
        }
    }

    fn event(seq: i64, kind: &str, wave: i64) -> DeploymentEvent {
        DeploymentEvent {
            seq,
            ts_ms: 100 * seq,
            kind: kind.into(),
            wave,
            detail: format!("{kind} {wave}"),
        }
    }

    fn deployment(
        events: Vec<DeploymentEvent>,
        members: Vec<DeploymentMember>,
    ) -> StoredDeployment {
        let last = events.last().cloned().expect("an event");
        StoredDeployment {
            id: "d-1".into(),
            product: "press".into(),
            group: "Production".into(),
            image_sha256: "00".into(),
            version: "1.1.0".into(),
            spec: serde_json::json!({"success_threshold": 0.9, "failure_threshold": 0.5}),
            created_by: "ops".into(),
            created_ms: 0,
            state: last.kind,
            wave: last.wave,
            events,
            members,
        }
    }

    #[test]
    fn point_decimals_come_from_the_reported_twin_within_bounds() {
        let reported = r#"{"v":1,"policy_name":null,"policy_version":null,"last_error":null,
            "point_decimals":{"line1/oil":2,"line1/rpm":0,"line1/odd":10}}"#;
        let decimals = point_decimals_of(reported);
        assert_eq!(decimals.get("line1/oil"), Some(&2));
        assert_eq!(decimals.get("line1/rpm"), Some(&0));
        assert_eq!(decimals.get("line1/odd"), None, "above MAX_POINT_DECIMALS");
        assert!(point_decimals_of(r#"{"v":1,"point_decimals":{"a":"x"}}"#).is_empty());
        assert!(
            point_decimals_of(r#"{"v":2}"#).is_empty(),
            "unknown version"
        );
        assert!(
            point_decimals_of(
                r#"{"v":1,"policy_name":null,"policy_version":null,"last_error":null}"#
            )
            .is_empty()
        );
    }

    #[test]
    fn waves_count_their_members_states_and_crashes() {
        let stored = deployment(
            vec![
                event(0, "created", 0),
                event(1, "wave-started", 0),
                event(2, "wave-succeeded", 0),
                event(3, "wave-started", 1),
                event(4, "halted", 1),
            ],
            vec![
                member("a", 0, "confirmed"),
                member("b", 0, "confirmed"),
                member("c", 1, "confirmed"),
                member("d", 1, "rolled-back"),
                member("e", 1, "downloading"),
                member("f", 1, "withheld"),
                member("g", 1, "failed"),
                member("h", 2, "pending"),
            ],
        );
        let crashed = BTreeMap::from([(1, BTreeSet::from(["c".to_owned(), "zz".to_owned()]))]);
        let progress = deployment_progress(&stored, &crashed);
        assert_eq!(progress.state, "halted");
        assert_eq!(progress.detail, "halted 1");
        assert_eq!(progress.failure_threshold, Some(0.5));
        let summary: Vec<_> = progress
            .waves
            .iter()
            .map(|w| {
                (
                    w.status.as_str(),
                    [
                        w.targeted,
                        w.offered,
                        w.withheld,
                        w.in_progress,
                        w.succeeded,
                        w.failed,
                        w.crashed,
                    ],
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("succeeded", [2, 2, 0, 0, 2, 0, 0]),
                ("halted", [5, 4, 1, 1, 0, 2, 1]),
                ("pending", [1, 0, 0, 0, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn deployment_states_are_advancing_halted_or_complete() {
        assert_eq!(deployment_state("created"), "advancing");
        assert_eq!(deployment_state("wave-started"), "advancing");
        assert_eq!(deployment_state("wave-succeeded"), "advancing");
        assert_eq!(deployment_state("halted"), "halted");
        assert_eq!(deployment_state("completed"), "complete");
    }

    #[test]
    fn the_pages_allow_no_inline_script_and_no_other_origin() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("form-action 'none'"));
        // The shell loads its script and style from this origin only.
        assert!(PAGE_HTML.contains("src=\"/assets/dashboard.js\""));
        assert!(!PAGE_HTML.contains("<script>"), "no inline script");
        assert!(!PAGE_HTML.contains("style="), "no inline style");
        assert!(!PAGE_HTML.contains("http://") && !PAGE_HTML.contains("https://"));
        let script = SCRIPT_JS.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
        assert!(!SCRIPT_JS.contains("innerHTML"), "text is set as text only");
    }
}
