//! Request bodies: JSON decoded as Consul decodes it, field names matched
//! whatever their case or underscores (see [`crate::fold`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::*;

/// Parses a JSON request body, keys matched as Consul matches them; a bad
/// one is a 400 with serde's reason.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request decode failed: empty body"));
    }
    crate::fold::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))
}

pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body too large: the limit is {MAX_BODY} bytes")
        } else {
            format!("cannot read request body: {e}")
        },
    })
}
