//! Content negotiation of `POST /v1/rank`: JSON (the default) or protobuf (`proto/prerank/v1/rank.proto`).
//!
//! The request's `Content-Type` picks how the body is decoded: `application/json` or `*+json` (or no
//! header at all) is JSON; `application/x-protobuf`, `application/protobuf` and
//! `application/vnd.google.protobuf` are protobuf; parameters (`; charset=...`) are ignored; anything
//! else is 415. The response (errors included) is encoded as `Accept` asks when it names exactly one
//! of the two encodings, else like the request.

use axum::http::{header, HeaderMap};

use super::ApiError;

/// One of the two body encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// The `Content-Type` of a body in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => crate::proto::CONTENT_TYPE,
        }
    }
}

/// The encoding a media type (without parameters, lower case) names, if any.
fn encoding_of(essence: &str) -> Option<Encoding> {
    match essence {
        "application/json" => Some(Encoding::Json),
        "application/x-protobuf" | "application/protobuf" | "application/vnd.google.protobuf" => {
            Some(Encoding::Protobuf)
        }
        e if e.starts_with("application/") && e.ends_with("+json") => Some(Encoding::Json),
        _ => None,
    }
}

/// How the request body is encoded (`Content-Type`; absent = JSON), or 415.
pub fn request_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Encoding::Json); // lenient: a missing content type is read as JSON
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.ends_with("+json") {
        return Ok(Encoding::Json);
    }
    encoding_of(essence).ok_or_else(|| ApiError::UnsupportedMediaType(essence.to_string()))
}

/// The encoding `Accept` asks for, when it names exactly one of JSON / protobuf (ranges with `q=0`
/// and wildcards do not count).
pub fn accepted(headers: &HeaderMap) -> Option<Encoding> {
    let mut found = None;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            let enc = if essence.ends_with("+json") {
                Some(Encoding::Json)
            } else {
                encoding_of(&essence)
            };
            match (enc, found) {
                (Some(_), _) if refused => {}
                (Some(e), None) => found = Some(e),
                (Some(e), Some(f)) if e != f => return None,
                _ => {}
            }
        }
    }
    found
}

/// The response encoding: `Accept` if it names exactly one encoding, else the request's (JSON when
/// the request's own encoding is unknown, e.g. on 415).
pub fn response_encoding(headers: &HeaderMap, request: Option<Encoding>) -> Encoding {
    accepted(headers).or(request).unwrap_or(Encoding::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn request_types() {
        use Encoding::*;
        let ct = |v| request_encoding(&headers(&[(header::CONTENT_TYPE, v)]));
        assert_eq!(request_encoding(&HeaderMap::new()).unwrap(), Json);
        assert_eq!(ct("application/json; charset=utf-8").unwrap(), Json);
        assert_eq!(ct("application/vnd.api+json").unwrap(), Json);
        assert_eq!(ct("application/x-protobuf").unwrap(), Protobuf);
        assert_eq!(
            ct("Application/Protobuf; proto=prerank.v1.RankRequest").unwrap(),
            Protobuf
        );
        assert_eq!(ct("application/vnd.google.protobuf").unwrap(), Protobuf);
        assert!(ct("text/plain").is_err());
        assert!(ct("application/octet-stream").is_err());
    }

    #[test]
    fn accept() {
        use Encoding::*;
        let acc = |v| response_encoding(&headers(&[(header::ACCEPT, v)]), Some(Protobuf));
        assert_eq!(acc("application/json"), Json);
        assert_eq!(acc("application/x-protobuf"), Protobuf);
        assert_eq!(acc("*/*"), Protobuf);
        assert_eq!(acc("application/json, application/x-protobuf"), Protobuf);
        assert_eq!(acc("application/json, application/x-protobuf;q=0"), Json);
        assert_eq!(acc("application/json, */*;q=0.1"), Json);
        assert_eq!(response_encoding(&HeaderMap::new(), None), Json);
        assert_eq!(
            response_encoding(&HeaderMap::new(), Some(Protobuf)),
            Protobuf
        );
    }
}
