//! An error answer: a status and a one-line reason, as Consul sends them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::registry::StoreError;

/// An error answer: a status and a one-line reason, as Consul sends them.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!("store write failed: {e}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot store the change: {e}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = self.message.replace('\n', " ");
        (self.status, format!("{line}\n")).into_response()
    }
}

pub type ApiResult = Result<Response, ApiError>;
