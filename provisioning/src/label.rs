//! The unit's label: device ID, serial, and a QR code (PNG and SVG) carrying the
//! device ID and the certificate fingerprint.

use std::path::Path;

use qrcode::{Color, QrCode};

use crate::files::{FileError, write_atomically};

/// Pixels per QR module in the PNG.
const PNG_SCALE: usize = 8;
/// Quiet zone around the code, in modules (the QR standard asks for 4).
const QUIET_ZONE: usize = 4;

/// What the label shows.
#[derive(Debug, Clone)]
pub struct LabelData<'a> {
    /// The device ID.
    pub device_id: &'a str,
    /// The serial number.
    pub serial: &'a str,
    /// The product.
    pub product: &'a str,
    /// The certificate fingerprint (lowercase hex SHA-256).
    pub fingerprint: &'a str,
    /// The status page's operator password (printed on the label, never recorded
    /// elsewhere).
    pub status_password: &'a str,
}

/// The label could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The QR encoder refused the data.
    #[error("QR code: {0}")]
    Qr(#[from] qrcode::types::QrError),
    /// PNG encoding failed.
    #[error("PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The text the QR code carries: `warden-device;v=1;id=<device id>;sha256=<fingerprint>`.
pub fn qr_payload(device_id: &str, fingerprint: &str) -> String {
    format!("warden-device;v=1;id={device_id};sha256={fingerprint}")
}

/// Parse a QR payload back into (device ID, fingerprint).
pub fn parse_qr_payload(text: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix("warden-device;v=1;id=")?;
    let (id, fingerprint) = rest.split_once(";sha256=")?;
    Some((id.to_owned(), fingerprint.to_owned()))
}

fn modules(payload: &str) -> Result<(usize, Vec<bool>), LabelError> {
    let code = QrCode::with_error_correction_level(payload.as_bytes(), qrcode::EcLevel::M)?;
    let width = code.width();
    let dark = code
        .to_colors()
        .into_iter()
        .map(|color| color == Color::Dark)
        .collect();
    Ok((width, dark))
}

/// The QR code as an 8-bit greyscale PNG.
pub fn qr_png(payload: &str) -> Result<Vec<u8>, LabelError> {
    let (width, dark) = modules(payload)?;
    let side = (width + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for y in 0..width {
        for x in 0..width {
            if dark[y * width + x] {
                for dy in 0..PNG_SCALE {
                    let row = (y + QUIET_ZONE) * PNG_SCALE + dy;
                    let start = row * side + (x + QUIET_ZONE) * PNG_SCALE;
                    pixels[start..start + PNG_SCALE].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    let side_u32 = u32::try_from(side).unwrap_or(u32::MAX);
    let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole label as SVG: the QR code and the printed lines.
pub fn label_svg(label: &LabelData<'_>) -> Result<String, LabelError> {
    let payload = qr_payload(label.device_id, label.fingerprint);
    let (width, dark) = modules(&payload)?;
    let side = width + 2 * QUIET_ZONE;
    let mut path = String::new();
    for y in 0..width {
        for x in 0..width {
            if dark[y * width + x] {
                path.push_str(&format!("M{} {}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE));
            }
        }
    }
    let lines = label_lines(label);
    let mut text = String::new();
    for (index, line) in lines.iter().enumerate() {
        text.push_str(&format!(
            r#"<text x="{}" y="{}" font-family="monospace" font-size="1.6">{}</text>"#,
            side + 1,
            4 + 3 * index,
            escape(line)
        ));
    }
    Ok(format!(
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {total} {side}" width="{pw}mm" height="{ph}mm">
<rect width="{total}" height="{side}" fill="#fff"/>
<path d="{path}" fill="#000"/>
{text}
</svg>
"##,
        total = side + 62,
        pw = (side + 62) / 2,
        ph = side / 2,
    ))
}

/// The printed lines of the label.
pub fn label_lines(label: &LabelData<'_>) -> Vec<String> {
    vec![
        format!("{} {}", label.product, label.serial),
        format!("ID {}", label.device_id),
        format!(
            "CERT {}",
            &label.fingerprint[..label.fingerprint.len().min(32)]
        ),
        format!("STATUS PAGE PASSWORD {}", label.status_password),
    ]
}

/// Write `label.png`, `label.svg` and `label.txt`.
pub fn write_label(
    label: &LabelData<'_>,
    png_path: &Path,
    svg_path: &Path,
    text_path: &Path,
) -> Result<(), LabelError> {
    let payload = qr_payload(label.device_id, label.fingerprint);
    write_atomically(png_path, &qr_png(&payload)?, 0o600)?;
    write_atomically(svg_path, label_svg(label)?.as_bytes(), 0o600)?;
    let mut text = label_lines(label).join("\n");
    text.push_str(&format!("\nQR {payload}\n"));
    write_atomically(text_path, text.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let payload = qr_payload("00ff", "abcd");
        assert_eq!(
            parse_qr_payload(&payload),
            Some(("00ff".to_owned(), "abcd".to_owned()))
        );
        assert_eq!(parse_qr_payload("warden-device;v=2;id=x;sha256=y"), None);
    }

    #[test]
    fn svg_escapes_text() {
        let label = LabelData {
            device_id: "id",
            serial: "<S&1>",
            product: "p",
            fingerprint: "ab",
            status_password: "pw",
        };
        let svg = label_svg(&label).expect("svg");
        assert!(svg.contains("&lt;S&amp;1&gt;"));
        assert!(!svg.contains("<S&1>"));
    }
}
