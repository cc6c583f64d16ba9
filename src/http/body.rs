//! Request bodies: JSON or `application/x-www-form-urlencoded`, read within a
//! size limit and a time limit, decoded into [`Fields`] that handlers take
//! typed values from.
//!
//! Both encodings decode into the same map, so every handler accepts both
//! without knowing which arrived. A body over the limit is refused from its
//! `Content-Length` before any of it is read, or as soon as the limit is
//! passed while reading a chunked one.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use serde_json::{Map, Value};

use super::error::ApiError;

/// The fields of a decoded body, taken out one by one by the handler.
#[derive(Debug, Default)]
pub struct Fields {
    map: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Json,
    Form,
}

/// Reads and decodes the body of a request that must carry one.
pub async fn read_fields(
    parts: &Parts,
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Fields, ApiError> {
    let encoding = encoding(parts)?;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes = match collected {
        Err(_elapsed) => {
            return Err(ApiError::InvalidBody(
                "the request body did not arrive in time".into(),
            ))
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge { limit })
        }
        Ok(Err(_)) => {
            return Err(ApiError::InvalidBody(
                "the request body could not be read".into(),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    decode(encoding, &bytes)
}

fn encoding(parts: &Parts) -> Result<Encoding, ApiError> {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::UnsupportedMediaType)?;
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(Encoding::Json),
        "application/x-www-form-urlencoded" => Ok(Encoding::Form),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// Decodes a URL query string with the form rules (so `?limit=5&after=x`
/// reads like a form body).
pub fn parse_query(query: &str) -> Result<Fields, ApiError> {
    decode_form(query.as_bytes())
        .map(|map| Fields { map })
        .map_err(|error| match error {
            ApiError::InvalidBody(_) => {
                ApiError::InvalidInput("the query string is not valid UTF-8".into())
            }
            other => other,
        })
}

fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Fields, ApiError> {
    match encoding {
        Encoding::Json => {
            // serde_json refuses nesting deeper than 128 levels, so a deeply
            // nested body is an error, not a stack overflow.
            let UniqueKeys(value) = serde_json::from_slice(bytes)
                .map_err(|e| ApiError::InvalidBody(format!("the body is not valid JSON: {e}")))?;
            match value {
                Value::Object(map) => Ok(Fields { map }),
                _ => Err(ApiError::InvalidInput(
                    "the body must be a JSON object".into(),
                )),
            }
        }
        Encoding::Form => decode_form(bytes).map(|map| Fields { map }),
    }
}

/// A JSON value in which no object has the same key twice. serde_json keeps
/// the last of two equal keys; a proxy or another parser in front of us may
/// keep the first, and then the two would act on different requests. So a
/// repeated key, at any depth, makes the body invalid.
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} appears more than once"
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn decode_form(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let mut map = Map::new();
    for pair in bytes.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = form_component(key)?;
        let value = form_component(value)?;
        if map.contains_key(&key) {
            return Err(ApiError::InvalidInput(format!(
                "{key} is given more than once"
            )));
        }
        map.insert(key, Value::String(value));
    }
    Ok(map)
}

/// One form component: `+` is a space, `%XX` a byte, and the result must be
/// UTF-8 (invalid sequences are refused, never replaced).
fn form_component(raw: &[u8]) -> Result<String, ApiError> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(decoded)
        .map_err(|_| ApiError::InvalidBody("the form data is not valid UTF-8".into()))
}

impl Fields {
    /// A string field that must be present.
    pub fn required(&mut self, name: &str) -> Result<String, ApiError> {
        self.optional(name)?
            .ok_or_else(|| ApiError::InvalidInput(format!("{name} is required")))
    }

    /// A string field that may be absent.
    pub fn optional(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.map.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::InvalidInput(format!("{name} must be a string"))),
        }
    }

    /// A boolean field that may be absent: JSON `true`/`false`, or the
    /// text `true`/`false` (a form).
    pub fn optional_bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.map.remove(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(_) => Err(ApiError::InvalidInput(format!(
                "{name} must be true or false"
            ))),
        }
    }

    /// Fails naming the first field no one took (for routes that refuse
    /// unknown fields).
    pub fn refuse_unknown(self) -> Result<(), ApiError> {
        match self.map.keys().next() {
            Some(key) => Err(ApiError::InvalidInput(format!("unknown field: {key}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_decode_to_the_same_fields() {
        let mut from_json = decode(
            Encoding::Json,
            br#"{"name":"Mike O'Hara","email":"m@x.io","extra":1}"#,
        )
        .unwrap();
        let mut from_form =
            decode(Encoding::Form, b"name=Mike+O%27Hara&email=m%40x.io&extra=1").unwrap();
        for fields in [&mut from_json, &mut from_form] {
            assert_eq!(fields.required("name").unwrap(), "Mike O'Hara");
            assert_eq!(fields.required("email").unwrap(), "m@x.io");
            assert!(fields.optional("role").unwrap().is_none());
        }
        assert!(from_form.refuse_unknown().is_err());
    }

    #[test]
    fn bad_bodies_get_the_right_errors() {
        let invalid_body = |e: &ApiError| matches!(e, ApiError::InvalidBody(_));
        assert!(invalid_body(
            &decode(Encoding::Json, b"{\"a\":").unwrap_err()
        ));
        assert!(invalid_body(&decode(Encoding::Json, b"").unwrap_err()));
        assert!(invalid_body(
            &decode(Encoding::Json, b"{\"a\":\"\xff\"}").unwrap_err()
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(invalid_body(
            &decode(Encoding::Json, deep.as_bytes()).unwrap_err()
        ));
        assert!(invalid_body(
            &decode(Encoding::Form, b"name=%ff").unwrap_err()
        ));
        assert!(matches!(
            decode(Encoding::Json, b"[1]").unwrap_err(),
            ApiError::InvalidInput(_)
        ));
        assert!(matches!(
            decode(Encoding::Form, b"a=1&a=2").unwrap_err(),
            ApiError::InvalidInput(_)
        ));
        for repeated in [
            &br#"{"email":"a@x.io","email":"b@x.io"}"#[..],
            br#"{"a":{"b":1,"b":2}}"#,
            br#"{"a":[{"c":1},{"c":1,"c":1}]}"#,
        ] {
            assert!(invalid_body(&decode(Encoding::Json, repeated).unwrap_err()));
        }
        let mut nested = decode(Encoding::Json, br#"{"a":[{"b":1},{"b":2.5}],"n":null}"#).unwrap();
        assert_eq!(
            nested.map.remove("a"),
            Some(serde_json::json!([{"b": 1}, {"b": 2.5}]))
        );
        let mut fields = decode(Encoding::Json, br#"{"name":5}"#).unwrap();
        let error = fields.required("name").unwrap_err().to_string();
        assert_eq!(error, "name must be a string");
        let mut fields = decode(Encoding::Json, b"{}").unwrap();
        assert_eq!(
            fields.required("email").unwrap_err().to_string(),
            "email is required"
        );
    }
}
