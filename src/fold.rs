//! JSON decoded as Consul decodes it: a struct's field names match whatever
//! their case or underscores (`ServiceID`, `serviceid`, `service_id` are one
//! field; python-consul sends the second, agent config files the third),
//! while the keys of maps (`Meta`, `NodeMeta`, `Header`...) stay as sent.
//!
//! This is the one place that folds field names, for API request bodies and
//! `zones/` definition files alike. It wraps serde's deserializer rather than
//! rewriting a parsed `Value`, so a file's error still names its line and
//! column, and it learns each struct's field names (aliases included) from
//! the struct itself: there is no second list to keep in step.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};

/// Parses JSON text with Consul's field-name matching.
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    from_slice(text.as_bytes())
}

/// Parses JSON bytes with Consul's field-name matching.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(Folding(&mut de))?;
    de.end()?;
    Ok(value)
}

/// Reads a parsed JSON value with Consul's field-name matching.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> serde_json::Result<T> {
    T::deserialize(Folding(value))
}

/// The field of `fields` that `key` names: itself when spelled exactly,
/// else the one equal to it with case and underscores ignored.
fn field_for(key: &str, fields: &'static [&'static str]) -> Option<&'static str> {
    if fields.contains(&key) {
        return None;
    }
    let folded = |s: &'static str| {
        s.bytes()
            .filter(|b| *b != b'_')
            .map(|b| b.to_ascii_lowercase())
    };
    let key_folded = || {
        key.bytes()
            .filter(|b| *b != b'_')
            .map(|b| b.to_ascii_lowercase())
    };
    fields.iter().copied().find(|f| folded(f).eq(key_folded()))
}

/// A deserializer whose structs fold their field names.
struct Folding<D>(D);

/// A visitor that hands on folding deserializers for what it visits.
struct Wrap<V> {
    inner: V,
    /// The field names when visiting a struct (`None`: a map, keys kept).
    fields: Option<&'static [&'static str]>,
}

impl<V> Wrap<V> {
    fn new(inner: V) -> Self {
        Wrap {
            inner,
            fields: None,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Wrap::new(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Folding<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16
        deserialize_i32 deserialize_i64 deserialize_i128 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Wrap::new(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, Wrap::new(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Wrap::new(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_tuple_struct(name, len, Wrap::new(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrap = Wrap {
            inner: visitor,
            fields: Some(fields),
        };
        self.0.deserialize_struct(name, fields, wrap)
    }

    // Enums in these bodies are unit variants (a status, a kind): their
    // contents need no folding.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool: bool visit_i8: i8 visit_i16: i16 visit_i32: i32
        visit_i64: i64 visit_i128: i128 visit_u8: u8 visit_u16: u16
        visit_u32: u32 visit_u64: u64 visit_u128: u128 visit_f32: f32
        visit_f64: f64 visit_char: char visit_str: &str
        visit_borrowed_str: &'de str visit_string: String
        visit_bytes: &[u8] visit_borrowed_bytes: &'de [u8]
        visit_byte_buf: Vec<u8>
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Folding(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Folding(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            fields: self.fields,
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }
}

/// A seed whose value is read through a folding deserializer.
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Folding(d))
    }
}

struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Map<A> {
    inner: A,
    fields: Option<&'static [&'static str]>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.fields {
            Some(fields) => self.inner.next_key_seed(FieldSeed { seed, fields }),
            None => self.inner.next_key_seed(seed),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A struct's key: read as text, then handed on as the field it names.
struct FieldSeed<K> {
    seed: K,
    fields: &'static [&'static str],
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for FieldSeed<K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for FieldSeed<K> {
    type Value = K::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<K::Value, E> {
        let key = field_for(key, self.fields).unwrap_or(key);
        self.seed
            .deserialize(de::value::StrDeserializer::<E>::new(key))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "ServiceID")]
        service_id: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(rename = "Name", alias = "Service")]
        name: String,
        #[serde(rename = "Meta", default)]
        meta: BTreeMap<String, String>,
        #[serde(rename = "Checks", default)]
        checks: Vec<Inner>,
        #[serde(rename = "Check")]
        check: Option<Inner>,
    }

    #[test]
    fn field_names_fold_and_map_keys_stay() {
        let cases = [
            r#"{"Name":"web","Meta":{"Service_ID":"x"},"Checks":[{"ServiceID":"a"}],"Check":{"serviceid":"b"}}"#,
            r#"{"name":"web","meta":{"Service_ID":"x"},"checks":[{"service_id":"a"}],"check":{"SERVICEID":"b"}}"#,
            r#"{"service":"web","META":{"Service_ID":"x"},"_checks":[{"serviceId":"a"}],"check":{"Service_Id":"b"}}"#,
        ];
        for text in cases {
            let got: Outer = from_str(text).unwrap();
            assert_eq!(got.name, "web", "{text}");
            assert_eq!(got.meta.get("Service_ID").map(String::as_str), Some("x"));
            assert_eq!(got.checks[0].service_id, "a", "{text}");
            assert_eq!(got.check.unwrap().service_id, "b", "{text}");
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let again: Outer = from_value(value).unwrap();
            assert_eq!(again.name, "web");
        }
    }

    #[test]
    fn errors_keep_their_line_and_trailing_text_is_refused() {
        let err = from_str::<Outer>("{\n\"name\": 5}").unwrap_err();
        assert_eq!(err.line(), 2, "{err}");
        assert!(from_str::<Outer>(r#"{"name":"a"} x"#).is_err());
        let err = from_str::<Outer>(r#"{"nam":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `Name`"), "{err}");
    }

    #[test]
    fn a_definition_in_snake_case_is_the_one_in_consul_case() {
        let a: crate::registry::definition::ServiceDef = from_str(
            r#"{"Name":"web","Port":80,"Check":{"HTTP":"http://127.0.0.1/","Interval":"10s","DeregisterCriticalServiceAfter":"1m"}}"#,
        )
        .unwrap();
        let b: crate::registry::definition::ServiceDef = from_str(
            r#"{"name":"web","port":80,"check":{"http":"http://127.0.0.1/","interval":"10s","deregister_critical_service_after":"1m"}}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id, "web");
        assert_eq!(
            a.checks[0].thresholds.deregister_critical_after,
            Some(std::time::Duration::from_secs(60))
        );
    }
}
