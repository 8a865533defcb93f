//! The layers every request passes: the ACL token, the browser host check,
//! the index and consistency headers, the body timeout, and a reason on
//! every refusal.

use std::net::IpAddr;

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::*;

pub(super) fn token_ok(api: &Api, headers: &HeaderMap, params: &Params) -> bool {
    let Some(want) = &api.token else {
        return true;
    };
    let given = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .or_else(|| params.get("token"));
    // Compare without an early exit, so timing says nothing of the token.
    given.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Writes (anything but GET and HEAD) need the token when one is set;
/// reads too with `http_token_for_reads`, except liveness, readiness and
/// metrics, which probes and scrapers must reach.
pub(super) async fn require_token(AxState(api): Shared, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let open_path = matches!(req.uri().path(), "/health" | "/ready" | "/metrics");
    if read && (!api.token_for_reads || open_path) {
        return next.run(req).await;
    }
    let params = Params::parse(req.uri().query());
    if token_ok(&api, req.headers(), &params) {
        next.run(req).await
    } else if read {
        ApiError::forbidden("Permission denied: a valid token is required for reads")
            .into_response()
    } else {
        ApiError::forbidden("Permission denied: a valid token is required for writes")
            .into_response()
    }
}

/// DNS rebinding protection: a request a browser sends (it carries
/// `Sec-Fetch-Site` or `Origin`) must name the listener by an IP literal,
/// `localhost`, or a name in `http_allowed_hosts`; otherwise a page on
/// another site could reach the API through a name it points at
/// 127.0.0.1. Programs (curl, Consul's clients) send neither header and
/// are unaffected.
pub(super) async fn browser_host_check(AxState(api): Shared, req: Request, next: Next) -> Response {
    let from_browser =
        req.headers().contains_key("Sec-Fetch-Site") || req.headers().contains_key("Origin");
    if from_browser {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !host_allowed(host, &api.allowed_hosts) {
            return ApiError::forbidden(format!(
                "host {host:?} is not an address of this listener: add it to http_allowed_hosts to use it from a browser"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// An IP literal, `localhost`, or an allowed name, with or without a port.
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(host)
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Every answer carries `X-Consul-Index`, errors included: Consul's
/// clients (python-consul) read it from every response and fail without it.
/// Reads also carry the consistency they were served with, and refuse
/// `?stale` with `?consistent`, as Consul. A single signpost is its own
/// leader, so every mode reads the same, current data.
pub(super) async fn index_on_every_reply(
    AxState(api): Shared,
    req: Request,
    next: Next,
) -> Response {
    let mut consistency = None;
    if req.method() == Method::GET && req.uri().path().starts_with("/v1/") {
        let params = Params::parse(req.uri().query());
        consistency = Some(match (params.get("stale"), params.get("consistent")) {
            (Some(_), Some(_)) => {
                let mut r = ApiError::bad_request(
                    "Cannot specify ?stale with ?consistent, conflicting semantics.",
                )
                .into_response();
                index_headers(r.headers_mut(), api.registry.index());
                return r;
            }
            (Some(_), None) => "stale",
            (None, Some(_)) => "consistent",
            (None, None) => "leader",
        });
    }
    let cached =
        req.method() == Method::GET && Params::parse(req.uri().query()).get("cached").is_some();
    let mut r = next.run(req).await;
    if cached && r.status().is_success() {
        // Consul's agent cache headers (Traefik, Fabio and consul-template
        // send ?cached): every signpost read is from memory, current now.
        r.headers_mut()
            .insert("X-Cache", HeaderValue::from_static("HIT"));
        r.headers_mut()
            .insert(header::AGE, HeaderValue::from_static("0"));
    }
    if !r.headers().contains_key("X-Consul-Index") {
        index_headers(r.headers_mut(), api.registry.index());
    }
    // A member that lost etcd answers from what it has, as a Consul
    // server without a leader answers stale reads.
    if api.cluster.as_ref().is_some_and(|c| !c.is_reachable()) {
        r.headers_mut()
            .insert("X-Consul-KnownLeader", HeaderValue::from_static("false"));
    }
    if let Some(c) = consistency {
        r.headers_mut().insert(
            "X-Consul-Effective-Consistency",
            HeaderValue::from_static(c),
        );
    }
    r
}

/// Gives every refusal a one-line reason: the router's own 405 (and any
/// other error that a layer below answered with no body) says what was
/// wrong, as every handler's [`ApiError`] does.
pub(super) async fn reason_on_every_refusal(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error())
        || axum::body::HttpBody::size_hint(r.body()).exact() != Some(0)
    {
        return r;
    }
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = r
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut m = format!("method {method} is not allowed on {path}");
        if !allowed.is_empty() {
            m.push_str(&format!(" (allowed: {allowed})"));
        }
        if path.ends_with('/') {
            m.push_str("; is an ID or name missing at the end of the path?");
        }
        m
    } else {
        format!(
            "{method} {path}: {}",
            status
                .canonical_reason()
                .unwrap_or("refused")
                .to_lowercase()
        )
    };
    let (mut parts, _) = r.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Response::from_parts(parts, axum::body::Body::from(format!("{message}\n")))
}

/// Reads a request's body within the body timeout, so that a client that
/// sends headers and then trickles (or never sends) its body is cut: 408.
pub(super) async fn read_body_in_time(AxState(api): Shared, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "request body not received within {}s",
                api.body_timeout.as_secs()
            ),
        }
        .into_response(),
        Ok(Err(_)) => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body too large or cut off: the limit is {MAX_BODY} bytes"),
        }
        .into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

pub(super) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}
