//! Image, delta and deployment endpoints, and content-addressed downloads.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::error::ApiError;
use super::state::ApiState;
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::deployments::{NO_UPDATES_GROUP, assign_waves};
use crate::images::{ImageStoreError, RangeRequest, is_sha256_hex, parse_range};
use crate::store::NewDeployment;
use warden_wire::fleet_api::{DeltaRecord, DeploymentRequest, ImageRecord, StoredDeployment};

pub(super) async fn upload_image(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, Json<ImageRecord>), ApiError> {
    let products: Vec<String> = state
        .store
        .products()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    // Hashing and verifying up to 256 MiB is CPU work: off the async workers.
    let (images, bytes) = (state.images.clone(), body.clone());
    let record = tokio::task::spawn_blocking(move || images.verify(&bytes, &products, now_ms()))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|error| ApiError::Invalid {
            field: "image",
            message: error.to_string(),
        })?;
    if let Some(existing) = state.store.image(&record.sha256).await? {
        return Ok((StatusCode::OK, Json(existing)));
    }
    // Issue #22 item 10: devices refuse an image below their anti-rollback counter;
    // refused here, at upload, rather than by every device of a rollout.
    if let Some((floor, version)) = state.store.security_floor(&record.product).await?
        && record.security_counter < floor
    {
        return Err(ApiError::Invalid {
            field: "image",
            message: format!(
                "image {} {} has security counter {}, below product {}'s floor {floor} \
                 (release {version} is confirmed on devices, whose anti-rollback counters \
                 now refuse anything lower)",
                record.product, record.version, record.security_counter, record.product
            ),
        });
    }
    state
        .images
        .save(&record.sha256, &body)
        .await
        .map_err(|error| match error {
            ImageStoreError::Io(..) => {
                tracing::error!(%error, "cannot store an image");
                ApiError::Internal
            }
            ImageStoreError::Refused(message) => ApiError::Invalid {
                field: "image",
                message,
            },
        })?;
    state.store.insert_image(&record).await?;
    tracing::info!(sha256 = %record.sha256, product = %record.product, version = %record.version, "image uploaded");
    Ok((StatusCode::CREATED, Json(record)))
}

pub(super) async fn list_images(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ImageRecord>>, ApiError> {
    Ok(Json(state.store.images().await?))
}

/// `POST /api/v1/deltas`: a delta (`warden image delta`), verified (signature chain to
/// a vendor root, the patch's digest) and refused unless its base and its result are
/// uploaded images of its product whose sizes and version match its signed header (a
/// device applies a delta only to its installed base and verifies the result as that
/// image: a delta between images the fleet does not know could never be offered).
pub(super) async fn upload_delta(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, Json<DeltaRecord>), ApiError> {
    let invalid = |message: String| ApiError::Invalid {
        field: "delta",
        message,
    };
    let products: Vec<String> = state
        .store
        .products()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let (images, bytes) = (state.images.clone(), body.clone());
    let (record, header) =
        tokio::task::spawn_blocking(move || images.verify_delta(&bytes, &products, now_ms()))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|error| invalid(error.to_string()))?;
    for (role, sha256, len) in [
        ("base", &record.base_sha256, header.base_len),
        ("result", &record.result_sha256, header.result_len),
    ] {
        let Some(image) = state.store.image(sha256).await? else {
            return Err(invalid(format!(
                "the delta's {role} is image {sha256}, which was not uploaded \
                 (upload it to /api/v1/images first)"
            )));
        };
        if image.product != record.product || u64::try_from(image.size).ok() != Some(len) {
            return Err(invalid(format!(
                "the delta's {role} names image {sha256} of {len} bytes for {}, but that \
                 image is {} bytes for {}",
                record.product, image.size, image.product
            )));
        }
        if role == "result" && image.version != record.result_version {
            return Err(invalid(format!(
                "the delta says its result is version {}, image {sha256} is {}",
                record.result_version, image.version
            )));
        }
    }
    if record.base_sha256 == record.result_sha256 {
        return Err(invalid(
            "the delta's base and result are the same image".into(),
        ));
    }
    if let Some(existing) = state.store.delta(&record.sha256).await? {
        return Ok((StatusCode::OK, Json(existing)));
    }
    state
        .images
        .save_delta(&record.sha256, &body)
        .await
        .map_err(|error| match error {
            ImageStoreError::Io(..) => {
                tracing::error!(%error, "cannot store a delta");
                ApiError::Internal
            }
            ImageStoreError::Refused(message) => invalid(message),
        })?;
    state.store.insert_delta(&record).await?;
    tracing::info!(sha256 = %record.sha256, base = %record.base_sha256, result = %record.result_sha256, size = record.size, "delta uploaded");
    Ok((StatusCode::CREATED, Json(record)))
}

pub(super) async fn list_deltas(
    State(state): State<ApiState>,
) -> Result<Json<Vec<DeltaRecord>>, ApiError> {
    Ok(Json(state.store.deltas(None).await?))
}

/// Bytes read from an image file per chunk of a download's body: what one download
/// holds in memory besides the socket's buffers.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// Seconds a client is told to wait when every download slot is taken.
pub const DOWNLOAD_RETRY_AFTER_SECS: u64 = 5;

/// `GET /images/{sha256}`: the image file, whole or one byte range, streamed from disk
/// in [`DOWNLOAD_CHUNK`]s. Images are signed and content-addressed, so any cache may
/// serve them; no token is needed. At most `http.max_downloads` at once: beyond, 503
/// with `Retry-After`.
pub(super) async fn download_image(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::NotFound(format!("no image {sha256}")));
    }
    let path = state.images.path(&sha256);
    download(&state, path, "image", &sha256, &headers).await
}

/// `GET /deltas/{sha256}`: a delta file, served as [`download_image`] serves images
/// (content-addressed, ranges, public, the same download slots).
pub(super) async fn download_delta(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::NotFound(format!("no delta {sha256}")));
    }
    let path = state.images.delta_path(&sha256);
    download(&state, path, "delta", &sha256, &headers).await
}

/// A stored file `path` (named `sha256`), whole or one byte range, streamed.
async fn download(
    state: &ApiState,
    path: std::path::PathBuf,
    what: &str,
    sha256: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Ok(permit) = std::sync::Arc::clone(&state.downloads).try_acquire_owned() else {
        return Ok(ApiError::Busy {
            what: "image downloads".into(),
            retry_after_secs: DOWNLOAD_RETRY_AFTER_SECS,
        }
        .into_response());
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => return Err(ApiError::NotFound(format!("no {what} {sha256}"))),
    };
    let size = file.metadata().await.map_err(|_| ApiError::Internal)?.len();
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let etag = format!("\"{sha256}\"");
    let common = [
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, etag),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000, immutable".to_owned(),
        ),
    ];
    let (status, start, length, content_range) = match range {
        RangeRequest::Whole => (StatusCode::OK, 0, size, None),
        RangeRequest::Part { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        RangeRequest::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                common,
            )
                .into_response());
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|_| ApiError::Internal)?;
    // The permit goes with the body: released when it is sent, or dropped with the
    // connection.
    let reader = Holding {
        reader: file.take(length),
        _permit: permit,
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        reader,
        DOWNLOAD_CHUNK,
    ));
    let mut response = (status, common, body).into_response();
    if let Ok(value) = header::HeaderValue::from_str(&length.to_string()) {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    if let Some(content_range) = content_range
        && let Ok(value) = header::HeaderValue::from_str(&content_range)
    {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

/// A reader that holds a download slot until it is dropped.
struct Holding<R> {
    reader: R,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Holding<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

pub(super) async fn create_deployment(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<DeploymentRequest>,
) -> Result<(StatusCode, Json<StoredDeployment>), ApiError> {
    request.validate().map_err(|invalid| ApiError::Invalid {
        field: invalid.field(),
        message: invalid.to_string(),
    })?;
    let Some(image) = state.store.image(&request.image).await? else {
        return Err(ApiError::Invalid {
            field: "image",
            message: format!("no uploaded image has SHA-256 {}", request.image),
        });
    };
    let groups = state.store.groups(&image.product).await?;
    let Some(group) = groups.iter().find(|g| g.name == request.group) else {
        return Err(ApiError::Invalid {
            field: "group",
            message: format!("product {} has no group {:?}", image.product, request.group),
        });
    };
    if !group.receives_updates || group.name == NO_UPDATES_GROUP {
        return Err(ApiError::Invalid {
            field: "group",
            message: format!("group {:?} never receives updates", group.name),
        });
    }
    let devices: Vec<String> = state
        .store
        .group_devices(&image.product, &group.name)
        .await?
        .into_iter()
        .filter(|d| !d.revoked)
        .map(|d| d.device_id)
        .collect();
    if devices.is_empty() {
        return Err(ApiError::Invalid {
            field: "group",
            message: format!("group {:?} has no registered device", group.name),
        });
    }
    let id = new_deployment_id();
    let spec = serde_json::to_string(&request).map_err(|_| ApiError::Internal)?;
    state
        .store
        .create_deployment(
            &NewDeployment {
                id: id.clone(),
                product: image.product.clone(),
                group: group.name.clone(),
                image_sha256: image.sha256.clone(),
                spec,
                created_by: caller.name.clone(),
                members: assign_waves(&devices, &request.waves),
            },
            now_ms(),
        )
        .await?;
    tracing::info!(deployment = %id, group = %group.name, version = %image.version, by = %caller.name, "deployment created");
    state.rollouts.step(&id).await?;
    let stored = state
        .store
        .deployment(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("deployment {id}")))?;
    Ok((StatusCode::CREATED, Json(stored)))
}

pub(super) async fn list_deployments(
    State(state): State<ApiState>,
) -> Result<Json<Vec<StoredDeployment>>, ApiError> {
    let mut out = Vec::new();
    for id in state.store.deployment_ids().await? {
        if let Some(deployment) = state.store.deployment(&id).await? {
            out.push(deployment);
        }
    }
    Ok(Json(out))
}

pub(super) async fn get_deployment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StoredDeployment>, ApiError> {
    state
        .store
        .deployment(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("deployment {id} is not known")))
}

fn new_deployment_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "d-{:x}-{:x}",
        now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
