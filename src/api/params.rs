//! A request's query string with Consul's conventions (repeatable keys,
//! bare flags, `?filter=`), and the deadline of a blocking read.

use super::filter::Filter;
use super::*;

/// The query string, with Consul's conventions: repeatable keys (`tag`),
/// and flags that count when present without a value (`?passing`).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

/// Read handlers take the query string parsed: `params: Params`.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Params, Self::Rejection> {
        Ok(Params::parse(parts.uri.query()))
    }
}

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        Params(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `?flag`, `?flag=true`, `?flag=1`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true") || v == "1")
    }

    /// `?filter=`, with `?node-meta=key:value` (repeatable) added as
    /// `and` clauses on `node_meta` (the node meta selector of this
    /// endpoint's items; `None` where Consul takes no `node-meta`).
    pub fn filter(&self, node_meta: Option<&[&str]>) -> Result<Option<Filter>, ApiError> {
        let mut filter = match self.get("filter") {
            None | Some("") => None,
            Some(expr) => {
                Some(Filter::parse(expr).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
        };
        for pair in node_meta.into_iter().flat_map(|_| self.all("node-meta")) {
            let (key, value) = pair.split_once(':').ok_or_else(|| {
                ApiError::bad_request(format!("invalid node-meta {pair:?}: use key:value"))
            })?;
            let mut selector = node_meta.unwrap_or_default().to_vec();
            selector.push(key);
            let clause = Filter::equal(&selector, value);
            filter = Some(match filter {
                Some(f) => f.and(clause),
                None => clause,
            });
        }
        Ok(filter)
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid {key} {v:?}: not a whole number"))
                })
            })
            .transpose()
    }
}

/// When a blocking read gives up waiting: `?wait` (Consul's default 5
/// minutes, at most 10) plus up to 1/16 of it as jitter, which spreads the
/// wake-ups of many watchers started together.
pub fn wait_deadline(params: &Params) -> Result<tokio::time::Instant, ApiError> {
    let wait = match params.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(w) => crate::registry::definition::parse_duration(w)
            .map_err(|e| ApiError::bad_request(format!("invalid wait: {e}")))?
            .min(MAX_WAIT),
    };
    let jitter = wait.mul_f64(fastrand::f64() / 16.0);
    Ok(tokio::time::Instant::now() + wait + jitter)
}
