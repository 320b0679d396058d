//! The scan API's request parsing: the `POST /api/v1/scan` JSON body
//! (`parse_request`: JSON, shape, image URL policy, model allow-list) and the
//! `X-User-ID` / `X-Idempotency-Key` headers.
//!
//! Input: one byte choosing the API config (host allow-list, private hosts
//! allowed or not), an `X-User-ID` line, an `X-Idempotency-Key` line, then the
//! body.
//!
//! Invariants: errors are the documented 400/401/422 JSON errors; an accepted
//! request has an absolute http(s) URL within the length bound, without
//! credentials, whose host is on the allow-list when there is one and, unless
//! private hosts are allowed, is not a loopback, private, link-local,
//! shared, reserved or multicast address, written directly or embedded in an
//! IPv6 address that reaches it (an independent classifier from the IANA
//! special-purpose registries); the model is allow-listed; the request the
//! worker receives (serialised and read back) is the one accepted; accepted
//! header values match their documented character sets.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use pipeline_scan::api::{self, ApiConfig, ApiError};
use pipeline_scan::scan::ScanRequest;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let user = parts.next().unwrap_or(b"");
    let idem = parts.next().unwrap_or(b"");
    let body = parts.next().unwrap_or(b"");

    let config = ApiConfig {
        allowed_hosts: if mode & 1 == 1 {
            vec!["example.com".into(), "CDN.Example.NET.".into()]
        } else {
            Vec::new()
        },
        allow_private_hosts: mode & 2 == 2,
        max_url_len: if mode & 4 == 4 { 64 } else { 2048 },
        ..ApiConfig::default()
    };
    headers(user, idem);
    body_checks(body, &config);
});

/// Status and `code` of an API error, as the client sees them.
fn seen(e: ApiError) -> (StatusCode, String) {
    let resp = e.into_response();
    let status = resp.status();
    let body = futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
        .expect("error body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("error body is JSON");
    assert!(v["detail"].is_string(), "{v}");
    (status, v["code"].as_str().expect("code").to_owned())
}

fn headers(user: &[u8], idem: &[u8]) {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(user) {
        h.insert("x-user-id", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(idem) {
        h.insert("x-idempotency-key", v);
    }
    match api::user_id(&h) {
        Ok(u) => {
            assert!(!u.is_empty() && u.len() <= 128, "{u:?}");
            assert!(u
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_-@".contains(&b)));
            assert_eq!(u, String::from_utf8_lossy(user).trim());
        }
        Err(e) => {
            let (status, code) = seen(e);
            assert!(
                (status, code.as_str()) == (StatusCode::UNAUTHORIZED, "MISSING_USER_ID")
                    || (status, code.as_str()) == (StatusCode::BAD_REQUEST, "INVALID_USER_ID"),
                "{status} {code}"
            );
        }
    }
    match api::idempotency(&h) {
        Ok(Some(k)) => {
            assert!(!k.is_empty() && k.len() <= 128);
            assert!(k.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(k.as_bytes(), idem);
        }
        Ok(None) => assert!(!h.contains_key("x-idempotency-key")),
        Err(e) => {
            let (status, code) = seen(e);
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::BAD_REQUEST, "INVALID_IDEMPOTENCY_KEY")
            );
        }
    }
}

fn body_checks(body: &[u8], config: &ApiConfig) {
    let req = match api::parse_request(body, config) {
        Ok(req) => req,
        Err(e) => {
            let (status, code) = seen(e);
            let ok = match status {
                StatusCode::BAD_REQUEST => code == "INVALID_JSON",
                StatusCode::UNPROCESSABLE_ENTITY => matches!(
                    code.as_str(),
                    "VALIDATION_ERROR"
                        | "INVALID_IMAGE_URL"
                        | "IMAGE_URL_NOT_ALLOWED"
                        | "UNSUPPORTED_MODEL"
                ),
                _ => false,
            };
            assert!(ok, "undocumented error {status} {code}");
            return;
        }
    };
    assert!(serde_json::from_slice::<serde_json::Value>(body)
        .unwrap()
        .is_object());
    if let Some(m) = &req.model {
        assert!(config.models.contains(m), "model {m:?}");
    }
    // What the worker reads back from the envelope is what was accepted.
    let wire = serde_json::to_value(&req).unwrap();
    let back: ScanRequest = serde_json::from_value(wire).unwrap();
    assert_eq!(back.image_url, req.image_url);
    assert_eq!(back.user_input, req.user_input);
    assert_eq!(back.model, req.model);

    let raw = &req.image_url;
    assert!(raw.len() <= config.max_url_len);
    let url = url::Url::parse(raw).expect("accepted URL parses");
    assert!(matches!(url.scheme(), "http" | "https"), "{raw}");
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{raw}"
    );
    let host = url.host().expect("accepted URL has a host");
    let name = match &host {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    if !config.allowed_hosts.is_empty() {
        assert!(
            ["example.com", "cdn.example.net"]
                .iter()
                .any(|h| name == *h || name.ends_with(&format!(".{h}"))),
            "host {name} is not on the allow-list"
        );
    }
    if !config.allow_private_hosts {
        match host {
            url::Host::Ipv4(ip) => assert!(!special_v4(ip), "private host accepted: {raw}"),
            url::Host::Ipv6(ip) => assert!(!special_v6(ip), "private host accepted: {raw}"),
            url::Host::Domain(_) => {
                assert!(
                    name != "localhost" && !name.ends_with(".localhost"),
                    "{raw}"
                );
                assert!(
                    !name.ends_with(".local") && !name.ends_with(".internal"),
                    "{raw}"
                );
                // A domain that is really an address was parsed as one.
                assert!(name.parse::<IpAddr>().is_err(), "{raw}");
            }
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

/// IPv4 special-purpose addresses (IANA registry) that are not global
/// unicast destinations.
fn special_v4(ip: Ipv4Addr) -> bool {
    const NETS: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    NETS.iter().any(|(net, bits)| in_v4(ip, *net, *bits))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

/// IPv6 addresses that are not global unicast destinations, or that embed
/// an IPv4 address a translator or tunnel delivers to (mapped, NAT64,
/// 6to4, IPv4-compatible), judged by that IPv4 address.
fn special_v6(ip: Ipv6Addr) -> bool {
    let low_v4 = Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32);
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96)
        || in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    {
        return special_v4(low_v4);
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let s = ip.segments();
        let v4 = Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32);
        return special_v4(v4);
    }
    const NETS: &[([u16; 8], u32)] = &[
        ([0, 0, 0, 0, 0, 0, 0, 0], 96), // unspecified, loopback, IPv4-compatible
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    ];
    NETS.iter().any(|(net, bits)| in_v6(ip, *net, *bits))
}
