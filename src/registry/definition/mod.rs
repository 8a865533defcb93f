//! Consul's JSON shapes for registrations: the agent service definition
//! (`PUT /v1/agent/service/register`, `{"service": …}` files), the catalog
//! registration (`PUT /v1/catalog/register`) and check definitions.
//!
//! Keys are accepted CamelCase (`DeregisterCriticalServiceAfter`) or
//! snake_case (`deregister_critical_service_after`) as Consul does; unknown
//! keys are ignored as Consul does. Each shape is validated while it is
//! deserialized (`try_from`), so serde_json reports a bad value with the
//! line it is on, and a value of these types is always a valid one.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::model::{
    Check, CheckKind, Connect, Health, Instance, Meta, Node, Source, TaggedAddress, Thresholds,
    Weights,
};

mod catalog;
mod check;
mod duration;
mod service;

pub use catalog::*;
pub use check::*;
pub use duration::*;
pub use service::*;

/// Consul's default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest interval Consul lets a check run at.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        // Go's JSON encoding of a time.Duration: nanoseconds.
        Nanos(u64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Nanos(n)) => Ok(Some(Duration::from_nanos(n))),
        Some(Raw::Text(t)) if t.is_empty() => Ok(None),
        Some(Raw::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Deserializes the raw shape `R` and validates it into `T` inside the
/// deserializer's map visit, so serde_json stamps a validation error with
/// the line it is on (the end of the offending object).
pub(crate) fn validated<'de, D, R, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    struct V<R, T>(PhantomData<(R, T)>);
    impl<'de, R, T> serde::de::Visitor<'de> for V<R, T>
    where
        R: Deserialize<'de>,
        T: TryFrom<R, Error = String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            T::try_from(raw).map_err(serde::de::Error::custom)
        }
    }
    // As a struct with R's field names, so that a deserializer matching
    // field names loosely (`crate::fold`) knows them.
    d.deserialize_struct("definition", fields_of::<R>(), V(PhantomData))
}

/// The field names (aliases included) that `R`'s derived `Deserialize`
/// matches, read by asking it to deserialize from a deserializer that only
/// notes them.
fn fields_of<'de, R: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the fields were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = R::deserialize(Fields(&mut fields));
    fields
}

pub(crate) fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The longest service name or tag DNS can carry in one label.
pub(crate) const MAX_LABEL: usize = 63;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "10x", "-1s", "s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn errors_carry_the_line() {
        let text = "{\n  \"Name\": \"web\",\n  \"Port\": 70000\n}";
        let err = serde_json::from_str::<ServiceDef>(text).unwrap_err();
        assert!(
            err.to_string().contains("port 70000 is out of range"),
            "{err}"
        );
        assert!(err.line() >= 3, "{err}");
        let err = serde_json::from_str::<ServiceDef>("{\"Port\": 1}").unwrap_err();
        assert!(err.to_string().contains("missing Name"), "{err}");
        let err =
            serde_json::from_str::<ServiceDef>("{\"Name\":\"a\",\n\"Check\":{\"TTL\":\"10q\"}}")
                .unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        assert_eq!(err.line(), 2);
    }
}
