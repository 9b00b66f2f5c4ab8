//! The fleet API as an operator uses it: reads, deployments, image uploads.

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use warden_wire::fleet_api::{DeviceView, IMAGES_PATH, ImageRecord, RegisteredDevice, device_path};

/// The fleet API, as an operator (admin token) uses it.
pub struct FleetApi {
    /// `http://host:port`.
    pub base: String,
    /// The bearer token.
    pub token: String,
    /// The client.
    pub http: reqwest::Client,
}

impl FleetApi {
    /// The answer to `GET path` as `T`, if the fleet gave one.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        self.get_with(path, &Vec::<(String, String)>::new()).await
    }

    /// The answer to `GET path?query` as `T`, if the fleet gave one.
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Option<T> {
        self.http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// A device's registry record, if it is registered.
    pub async fn registered(&self, device_id: &str) -> Option<RegisteredDevice> {
        match self.get::<DeviceView>(&device_path(device_id)).await? {
            DeviceView::Registered(record) => Some(*record),
            DeviceView::Unregistered { .. } => None,
        }
    }

    /// `POST path` with `body` as JSON: the status and the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        Ok((
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Uploads a signed image; its SHA-256.
    pub async fn upload(&self, image: Vec<u8>) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}{IMAGES_PATH}", self.base))
            .bearer_auth(&self.token)
            .body(image)
            .send()
            .await
            .context("uploading an image")?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status != 201 && status != 200 {
            bail!("the fleet refused the image: {status} {body}");
        }
        Ok(serde_json::from_value::<ImageRecord>(body)
            .context("the fleet's image record")?
            .sha256)
    }
}
