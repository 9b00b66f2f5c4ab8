//! Request encoding and response decoding shared by the blocking and async clients.

use warden_pluton::protocol::{
    FRAME_HEADER_LEN, MAX_FRAME_LEN, Request, Response, decode_response, encode_frame,
    frame_body_len,
};

use crate::error::{ClientError, operation_name};

/// Default time a client waits for pluton to answer.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Encode a request frame.
pub(crate) fn encode_request(request: &Request) -> Result<Vec<u8>, ClientError> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN + MAX_FRAME_LEN];
    let length = encode_frame(request, &mut frame).map_err(|_| ClientError::ArgumentTooLarge {
        argument: operation_name(request),
    })?;
    frame.truncate(length);
    Ok(frame)
}

/// The body length announced by a response header.
pub(crate) fn response_body_len(
    header: [u8; FRAME_HEADER_LEN],
    operation: &'static str,
) -> Result<usize, ClientError> {
    frame_body_len(header).map_err(|_| ClientError::UnexpectedResponse { operation })
}

/// Decode a response body; pluton's error answers become [`ClientError::Refused`].
pub(crate) fn decode(body: &[u8], operation: &'static str) -> Result<Response, ClientError> {
    match decode_response(body) {
        Ok(Response::Error(error)) => Err(ClientError::Refused { operation, error }),
        Ok(response) => Ok(response),
        Err(_) => Err(ClientError::UnexpectedResponse { operation }),
    }
}
