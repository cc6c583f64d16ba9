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
            let value: Value = serde_json::from_slice(bytes)
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
