//! Registry endpoints: products, groups, device registration and revocation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::ApiError;
use super::state::ApiState;
use crate::clock::now_ms;
use crate::enrollment::{
    certificates_from_pem, check_ca_bundle, fingerprint, verify_device_certificate,
};
use crate::store::{NewDevice, Product, ProductOutcome, Registration, is_product_name};
use warden_wire::fleet_api::{
    DeviceView, EnrollmentRequest, Group, GroupRequest, ProductRequest, ProductView,
    RegisterRequest, RegisterResponse, RegisteredDevice,
};

fn product_view(product: Product) -> ProductView {
    let ca_fingerprints = certificates_from_pem(&product.manufacturer_ca_pem)
        .map(|certs| certs.iter().map(|c| fingerprint(c)).collect())
        .unwrap_or_default();
    ProductView {
        name: product.name,
        manufacturer_ca_pem: product.manufacturer_ca_pem,
        ca_fingerprints,
        created_ms: product.created_ms,
        open_enrollment: product.open_enrollment,
    }
}

/// Whether `name` can be a group name.
fn valid_group_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
}

pub(super) async fn create_product(
    State(state): State<ApiState>,
    Json(request): Json<ProductRequest>,
) -> Result<(StatusCode, Json<ProductView>), ApiError> {
    if !is_product_name(&request.name) {
        return Err(ApiError::Invalid {
            field: "name",
            message: format!(
                "{:?} is not 1 to 16 letters, digits, '-', '_' or '.'",
                request.name
            ),
        });
    }
    let bundle =
        check_ca_bundle(&request.manufacturer_ca_pem).map_err(|error| ApiError::Invalid {
            field: "manufacturer_ca_pem",
            message: error.to_string(),
        })?;
    let same_ca = |stored: &str| certificates_from_pem(stored).is_ok_and(|stored| stored == bundle);
    let outcome = state
        .store
        .create_product(
            &request.name,
            &request.manufacturer_ca_pem,
            same_ca,
            now_ms(),
        )
        .await?;
    let status = match outcome {
        ProductOutcome::Created => StatusCode::CREATED,
        ProductOutcome::Unchanged => StatusCode::OK,
        ProductOutcome::Conflict => {
            return Err(ApiError::Conflict(format!(
                "product {} exists with another manufacturer CA",
                request.name
            )));
        }
    };
    state
        .trust
        .set_product_ca(&request.name, bundle)
        .map_err(|error| ApiError::Invalid {
            field: "manufacturer_ca_pem",
            message: error.to_string(),
        })?;
    if outcome == ProductOutcome::Created {
        tracing::info!(product = %request.name, "product created");
    }
    let product = state
        .store
        .product(&request.name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("product {}", request.name)))?;
    Ok((status, Json(product_view(product))))
}

pub(super) async fn set_enrollment(
    State(state): State<ApiState>,
    Path(product): Path<String>,
    Json(request): Json<EnrollmentRequest>,
) -> Result<Json<ProductView>, ApiError> {
    if !state
        .store
        .set_open_enrollment(&product, request.open)
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "product {product} is not known"
        )));
    }
    state.trust.set_open_enrollment(&product, request.open);
    tracing::warn!(product = %product, open = request.open, "product enrollment changed");
    let stored = known_product(&state, &product).await?;
    Ok(Json(product_view(stored)))
}

pub(super) async fn list_products(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ProductView>>, ApiError> {
    Ok(Json(
        state
            .store
            .products()
            .await?
            .into_iter()
            .map(product_view)
            .collect(),
    ))
}

async fn known_product(state: &ApiState, name: &str) -> Result<Product, ApiError> {
    state
        .store
        .product(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("product {name} is not known")))
}

pub(super) async fn list_groups(
    State(state): State<ApiState>,
    Path(product): Path<String>,
) -> Result<Json<Vec<Group>>, ApiError> {
    known_product(&state, &product).await?;
    Ok(Json(state.store.groups(&product).await?))
}

pub(super) async fn create_group(
    State(state): State<ApiState>,
    Path(product): Path<String>,
    Json(request): Json<GroupRequest>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    known_product(&state, &product).await?;
    if !valid_group_name(&request.name) {
        return Err(ApiError::Invalid {
            field: "name",
            message: format!(
                "{:?} is not 1 to 64 letters, digits, spaces, '-', '_' or '.'",
                request.name
            ),
        });
    }
    let created = state
        .store
        .create_group(&product, &request.name, now_ms())
        .await?;
    let group = state
        .store
        .groups(&product)
        .await?
        .into_iter()
        .find(|g| g.name == request.name)
        .ok_or_else(|| ApiError::NotFound(format!("group {}", request.name)))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group)))
}

pub(super) async fn register_device(
    State(state): State<ApiState>,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let invalid = |field: &'static str, message: String| ApiError::Invalid { field, message };
    if !warden_wire::topics::valid_command_id(&request.device_id) {
        return Err(invalid(
            "device_id",
            format!(
                "{:?} is not 1 to 64 letters, digits, '-' or '_'",
                request.device_id
            ),
        ));
    }
    if request.serial.trim().is_empty()
        || request.serial.len() > 128
        || request.serial.chars().any(char::is_control)
    {
        return Err(invalid(
            "serial",
            "must be 1 to 128 printable characters".to_owned(),
        ));
    }
    if request
        .image_version
        .parse::<warden_image::SemanticVersion>()
        .is_err()
    {
        return Err(invalid(
            "image_version",
            format!("{:?} is not MAJOR.MINOR.PATCH", request.image_version),
        ));
    }
    let Some(product) = state.store.product(&request.product).await? else {
        return Err(invalid(
            "product",
            format!("product {:?} is not known to the fleet", request.product),
        ));
    };
    if !state
        .store
        .groups(&product.name)
        .await?
        .iter()
        .any(|g| g.name == request.group)
    {
        return Err(invalid(
            "group",
            format!("product {} has no group {:?}", product.name, request.group),
        ));
    }
    let certificate = match certificates_from_pem(&request.certificate_pem) {
        Ok(certs) if certs.len() == 1 => certs.into_iter().next(),
        Ok(certs) => {
            return Err(invalid(
                "certificate_pem",
                format!("holds {} certificates; send only the device's", certs.len()),
            ));
        }
        Err(error) => return Err(invalid("certificate_pem", error.to_string())),
    };
    let Some(certificate) = certificate else {
        return Err(invalid("certificate_pem", "holds no certificate".into()));
    };
    let bundle = certificates_from_pem(&product.manufacturer_ca_pem)
        .map_err(|error| invalid("product", format!("stored CA unusable: {error}")))?;
    verify_device_certificate(&certificate, &bundle, &request.device_id).map_err(|error| {
        invalid(
            "certificate_pem",
            format!("the certificate {error} (product {})", product.name),
        )
    })?;
    let print = fingerprint(&certificate);
    let outcome = state
        .store
        .register_device(
            &NewDevice {
                device_id: &request.device_id,
                serial: &request.serial,
                product: &product.name,
                group: &request.group,
                certificate_pem: &request.certificate_pem,
                fingerprint: &print,
                image_version: &request.image_version,
            },
            now_ms(),
        )
        .await?;
    let (status, device) = match outcome {
        Registration::Created(device) => {
            tracing::info!(device = %device.device_id, product = %device.product, "device registered");
            (StatusCode::CREATED, device)
        }
        Registration::Unchanged(device) => (StatusCode::OK, device),
        Registration::Conflict(existing) => {
            return Err(ApiError::Conflict(format!(
                "device {} is registered with another certificate (fingerprint {existing})",
                request.device_id
            )));
        }
    };
    state
        .trust
        .set_registered(&device.device_id, &device.fingerprint, &device.product);
    Ok((
        status,
        Json(RegisterResponse {
            device_id: device.device_id,
            fingerprint: device.fingerprint,
            product: device.product,
            group: device.group,
        }),
    ))
}

pub(super) async fn get_device(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    if let Some(device) = state.store.registered_device(&id).await? {
        return Ok(Json(DeviceView::Registered(Box::new(device))));
    }
    let seen = state
        .store
        .seen_device(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {id} is not known")))?;
    Ok(Json(DeviceView::Unregistered {
        device_id: id,
        registered: false,
        last_seen_ms: seen.last_seen_ms,
    }))
}

pub(super) async fn revoke_device(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RegisteredDevice>, ApiError> {
    let Some(device) = state.store.registered_device(&id).await? else {
        return Err(ApiError::NotFound(format!("device {id} is not registered")));
    };
    state.store.revoke_device(&id, now_ms()).await?;
    state.trust.revoke(&device.fingerprint);
    state.devices.disconnect(&id);
    tracing::warn!(device = %id, fingerprint = %device.fingerprint, "device certificate revoked");
    state
        .store
        .registered_device(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("device {id}")))
}
