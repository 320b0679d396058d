//! The image URL policy of the scan API (server-side request forgery).
//!
//! An image URL is handed to the vision model, which fetches it: a URL that
//! names a host inside the deployment (cloud metadata, the cluster API,
//! Redis, an admin port) would make that fetcher reach it. The API therefore
//! parses the URL with the WHATWG parser (the [`url`] crate), rejects hosts
//! that are not public by their *literal* form, and forwards only the
//! canonical serialization, never the raw string, so every later parser sees
//! the host that was checked.
//!
//! What is rejected (422, [`ImageUrlError`]):
//!
//! - not `http`/`https`, credentials (`user@`), no host, longer than the
//!   limit, or characters parsers disagree on (`\`, ASCII control, space);
//! - IPv4 in any spelling the parser accepts (dotted, decimal `2130706433`,
//!   hex `0x7f.1`, octal `0177.0.0.1`, short `127.1`, percent-encoded or
//!   full-width digits) when private, loopback, link-local, CGNAT, `0/8`,
//!   `192.0.0/24`, documentation, benchmarking, 6to4 relay, multicast or
//!   reserved ([`ipv4_non_public`]);
//! - IPv6 outside global unicast `2000::/3` or in its special blocks, and
//!   IPv4-embedding forms (mapped `::ffff:a.b.c.d`, translated
//!   `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) whose
//!   IPv4 address is not public; the deprecated IPv4-compatible `::/96`,
//!   local-use NAT64 and Teredo always ([`ipv6_non_public`]);
//! - names that resolve inside by construction: single labels (`metadata`,
//!   `kubernetes`: resolved through search domains) and the suffixes
//!   `localhost`, `local`, `internal`, `svc`, `home.arpa`, … (`*.internal`
//!   covers `metadata.google.internal`; [`domain_non_public`]).
//!
//! The limit of a literal check: a public-looking DNS name can resolve to an
//! inside address (`127.0.0.1.nip.io`, a rebinding domain). Resolving here
//! would not help either (the fetcher resolves again, later): pinning the
//! resolved address is the fetcher's job (an egress proxy, or a fetcher
//! that refuses non-public peer addresses after connecting).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an image URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageUrlError {
    /// Longer than the configured limit (raw or canonical form).
    #[error("image_url is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Contains `\`, ASCII control characters or spaces, which URL parsers
    /// read differently (`http://a.com\@127.0.0.1/`).
    #[error("image_url contains a backslash, space or control character")]
    Ambiguous,
    /// Not an absolute URL.
    #[error("image_url is not an absolute URL: {0}")]
    Unparseable(#[source] url::ParseError),
    /// A scheme other than http/https.
    #[error("image_url must use http or https, not {0:?}")]
    Scheme(String),
    /// `user:password@` in the URL.
    #[error("image_url must not contain credentials")]
    Credentials,
    /// No host (`http:` URLs always have one; kept for completeness).
    #[error("image_url has no host")]
    NoHost,
    /// The host is inside by its literal form.
    #[error("image_url host {host} is not allowed: {reason}")]
    NonPublicHost {
        /// The host as parsed (canonical).
        host: String,
        /// Which rule matched.
        reason: &'static str,
    },
    /// An allow-list is configured and the host is not on it.
    #[error("image_url host {host} is not allowed")]
    NotAllowListed {
        /// The host as parsed (canonical).
        host: String,
    },
}

impl ImageUrlError {
    /// Whether the URL itself is malformed (`INVALID_IMAGE_URL`) rather
    /// than well-formed but refused by policy (`IMAGE_URL_NOT_ALLOWED`).
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            Self::NonPublicHost { .. } | Self::NotAllowListed { .. }
        )
    }
}

/// What an image URL must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUrlPolicy<'a> {
    /// Longest raw and canonical URL, bytes.
    pub max_len: usize,
    /// When non-empty, the host must be one of these or a subdomain.
    pub allowed_hosts: &'a [String],
    /// Skip the non-public host checks (the demo: nothing fetches there).
    pub allow_private_hosts: bool,
}

/// Parses `raw`, applies `policy` and returns the canonical URL (the one to
/// forward).
pub fn check(raw: &str, policy: &ImageUrlPolicy<'_>) -> Result<url::Url, ImageUrlError> {
    if raw.len() > policy.max_len {
        return Err(ImageUrlError::TooLong {
            max: policy.max_len,
        });
    }
    if raw
        .bytes()
        .any(|b| b == b'\\' || b == b' ' || b.is_ascii_control())
    {
        return Err(ImageUrlError::Ambiguous);
    }
    let url = url::Url::parse(raw).map_err(ImageUrlError::Unparseable)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ImageUrlError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ImageUrlError::Credentials);
    }
    if url.as_str().len() > policy.max_len {
        return Err(ImageUrlError::TooLong {
            max: policy.max_len,
        });
    }
    let host = url.host().ok_or(ImageUrlError::NoHost)?;
    let host_name = match &host {
        url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    // With more than one trailing dot the URL parser keeps an address as a
    // domain (`127.0.0.1..`), which resolvers still read as the address:
    // a host that means an address in one reading and a name in another
    // is refused, like any other ambiguous spelling.
    if matches!(host, url::Host::Domain(_))
        && matches!(
            url::Host::parse(&host_name),
            Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_))
        )
    {
        return Err(ImageUrlError::Ambiguous);
    }
    if !policy.allow_private_hosts {
        let reason = match host {
            url::Host::Ipv4(ip) => ipv4_non_public(ip),
            url::Host::Ipv6(ip) => ipv6_non_public(ip),
            url::Host::Domain(_) => domain_non_public(&host_name),
        };
        if let Some(reason) = reason {
            return Err(ImageUrlError::NonPublicHost {
                host: host_name,
                reason,
            });
        }
    }
    if !policy.allowed_hosts.is_empty()
        && !policy.allowed_hosts.iter().any(|h| {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            host_name == h || host_name.ends_with(&format!(".{h}"))
        })
    {
        return Err(ImageUrlError::NotAllowListed { host: host_name });
    }
    Ok(url)
}

/// Why an IP address is not a public unicast address, if it is not.
pub fn ip_non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => ipv4_non_public(v4),
        IpAddr::V6(v6) => ipv6_non_public(v6),
    }
}

/// Why an IPv4 address is not public (IANA special-purpose registry), if it
/// is not.
pub fn ipv4_non_public(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "\"this network\" address (0.0.0.0/8)",
        (10, _, _) => "private address (10.0.0.0/8)",
        (100, 64..=127, _) => "shared/CGNAT address (100.64.0.0/10)",
        (127, _, _) => "loopback address (127.0.0.0/8)",
        (169, 254, _) => "link-local address (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private address (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation address",
        (192, 88, 99) => "6to4 relay anycast address (192.88.99.0/24)",
        (192, 168, _) => "private address (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "multicast address (224.0.0.0/4)",
        (240..=255, _, _) => "reserved or broadcast address (240.0.0.0/4)",
        _ => return None,
    })
}

/// Why an IPv6 address is not public, if it is not: anything outside global
/// unicast `2000::/3`, the special blocks inside it, and IPv4-embedding
/// forms whose IPv4 address is not public.
pub fn ipv6_non_public(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-embedding forms: as public as the IPv4 address they carry.
    let carried = match s {
        // ::ffff:a.b.c.d (IPv4-mapped)
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(embedded(hi, lo)),
        // ::ffff:0:a.b.c.d (IPv4-translated, RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(embedded(hi, lo)),
        // 64:ff9b::a.b.c.d (NAT64 well-known prefix, RFC 6052)
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(embedded(hi, lo)),
        // 2002:AABB:CCDD::/48 (6to4, RFC 3056)
        [0x2002, hi, lo, ..] => Some(embedded(hi, lo)),
        _ => None,
    };
    if let Some(v4) = carried {
        return ipv4_non_public(v4).map(|_| "IPv6 form of a non-public IPv4 address");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified address (::)",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback address (::1)",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible address (::/96, deprecated)",
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 address (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only address (100::/64)",
        [0x2001, 0x0db8, ..] => "documentation address (2001:db8::/32)",
        [0x2001, 0..=0x01ff, ..] => "IETF protocol assignment or Teredo (2001::/23)",
        [0x3fff, 0..=0x0fff, ..] => "documentation address (3fff::/20)",
        [0x2000..=0x3fff, ..] => return None,
        [0xfc00..=0xfdff, ..] => "unique local address (fc00::/7)",
        [0xfe80..=0xfebf, ..] => "link-local address (fe80::/10)",
        [0xfec0..=0xfeff, ..] => "site-local address (fec0::/10, deprecated)",
        [0xff00..=0xffff, ..] => "multicast address (ff00::/8)",
        _ => "not a global unicast address (outside 2000::/3)",
    })
}

/// Name suffixes that only resolve inside a network (RFC 6761 special-use
/// names, RFC 6762 appendix G private TLDs, Kubernetes service names).
pub const INSIDE_SUFFIXES: &[&str] = &[
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
    "home.arpa",
    "arpa",
    "svc",
    "test",
    "invalid",
    "example",
    "onion",
    "alt",
];

/// Why a domain name is inside by its literal form, if it is: a single
/// label (resolved through the search domains: `metadata`, `kubernetes`)
/// or one of [`INSIDE_SUFFIXES`]. `name` is lowercase without a trailing dot.
pub fn domain_non_public(name: &str) -> Option<&'static str> {
    if name.is_empty() || !name.contains('.') {
        return Some("single-label name (resolved through local search domains)");
    }
    INSIDE_SUFFIXES
        .iter()
        .any(|s| name == *s || name.strip_suffix(s).is_some_and(|rest| rest.ends_with('.')))
        .then_some("name that only resolves inside a network")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> ImageUrlPolicy<'static> {
        ImageUrlPolicy {
            max_len: 2048,
            allowed_hosts: &[],
            allow_private_hosts: false,
        }
    }

    /// Found by the `scan_api` fuzz target: `http://127.0.0.1../` was
    /// accepted (two or more trailing dots keep the host a domain, which
    /// resolvers read as the address). Such hosts are refused, public or not.
    #[test]
    fn addresses_with_trailing_dots_are_refused() {
        for raw in [
            "http://127.0.0.1../a.jpg",
            "http://127.0.0.1........./a.jpg",
            "http://0x7f.0.0.1../a.jpg",
            "http://10.0.0.1.../a.jpg",
            "http://169.254.169.254../latest/meta-data",
            "http://2130706433../a.jpg",
            "http://123.0.0.1........./",
        ] {
            assert!(
                matches!(check(raw, &open()), Err(ImageUrlError::Ambiguous)),
                "{raw}: {:?}",
                check(raw, &open())
            );
        }
        assert!(matches!(
            check("http://93.184.216.34../a.jpg", &open()),
            Err(ImageUrlError::Ambiguous)
        ));
        assert!(check("http://93.184.216.34./a.jpg", &open()).is_ok());
    }

    #[test]
    fn public_urls_pass_and_come_back_canonical() {
        for (raw, canonical) in [
            (
                "https://images.example.com/a.jpg",
                "https://images.example.com/a.jpg",
            ),
            (
                "HTTP://Images.Example.COM:80/a%20b",
                "http://images.example.com/a%20b",
            ),
            ("http://93.184.216.34/a.jpg", "http://93.184.216.34/a.jpg"),
            ("http://8.8.8.8./x", "http://8.8.8.8/x"),
            ("http://[2606:4700::1111]/x", "http://[2606:4700::1111]/x"),
            ("http://[::ffff:8.8.8.8]/x", "http://[::ffff:808:808]/x"),
            ("http://[64:ff9b::8.8.8.8]/x", "http://[64:ff9b::808:808]/x"),
            ("http://[2002:808:808::1]/x", "http://[2002:808:808::1]/x"),
            (
                "https://xn--bcher-kva.example.com/x",
                "https://xn--bcher-kva.example.com/x",
            ),
            (
                "https://bücher.example.com/x",
                "https://xn--bcher-kva.example.com/x",
            ),
            ("http://100.63.255.255/x", "http://100.63.255.255/x"),
            ("http://172.32.0.1/x", "http://172.32.0.1/x"),
            ("http://192.0.1.1/x", "http://192.0.1.1/x"),
        ] {
            match check(raw, &open()) {
                Ok(url) => assert_eq!(url.as_str(), canonical, "{raw}"),
                Err(e) => panic!("{raw}: {e}"),
            }
        }
    }

    #[test]
    fn malformed_urls_are_invalid() {
        for raw in [
            "ftp://example.com/a.jpg",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "gopher://example.com:6379/_INFO",
            "not a url",
            "no-scheme.jpg",
            "//example.com/a.jpg",
            "https://user:pw@example.com/a.jpg",
            "https://example.com@127.0.0.1/a.jpg",
            "http://example.com\\@127.0.0.1/",
            "http://exa\tmple.com/",
            "http://exa\nmple.com/",
            " http://127.0.0.1/",
            "http://[::1/",
            "http://256.0.0.1/",
        ] {
            let e = check(raw, &open()).expect_err(raw);
            assert!(e.is_malformed(), "{raw}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(3000));
        assert!(matches!(
            check(&long, &open()),
            Err(ImageUrlError::TooLong { .. })
        ));
        // Within the limit raw, over it once percent-encoded.
        let grows = format!("https://example.com/{}", "é".repeat(700));
        assert!(grows.len() <= 2048);
        assert!(matches!(
            check(&grows, &open()),
            Err(ImageUrlError::TooLong { .. })
        ));
    }

    #[test]
    fn inside_hosts_are_refused_in_every_literal_form() {
        for raw in [
            // IPv4, every spelling the WHATWG parser accepts.
            "http://127.0.0.1/a.jpg",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://１２７.０.０.１/",
            "http://127。0。0。1/",
            "http://0.0.0.0/",
            "http://0/",
            "http://10.1.2.3/",
            "http://172.16.5.4/",
            "http://172.31.255.255/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            "http://192.0.0.1/",
            "http://192.0.0.170/",
            "http://192.0.2.1/",
            "http://198.18.0.1/",
            "http://198.51.100.7/",
            "http://203.0.113.9/",
            "http://192.88.99.1/",
            "http://224.0.0.1/",
            "http://240.0.0.1/",
            "http://255.255.255.255/",
            // IPv6 and IPv4-embedding IPv6.
            "http://[::1]:8080/a.jpg",
            "http://[::]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[::ffff:0:a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[64:ff9b:1::8.8.8.8]/",
            "http://[2002:7f00:1::1]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[::127.0.0.1]/",
            "http://[::8.8.8.8]/",
            "http://[fd00::1]/",
            "http://[fc00::1]/",
            "http://[fe80::1]/",
            "http://[fec0::1]/",
            "http://[ff02::1]/",
            "http://[100::1]/",
            "http://[2001::1]/",
            "http://[2001:db8::1]/",
            "http://[3fff::1]/",
            "http://[5f00::1]/",
            "http://[fd00:ec2::254]/",
            // Names that only resolve inside.
            "http://localhost/a.jpg",
            "http://LOCALHOST./",
            "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
            "http://%6c%6f%63%61%6c%68%6f%73%74/",
            "http://api.localhost/",
            "http://metadata/computeMetadata/v1/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://kubernetes.default.svc/",
            "http://kubernetes.default.svc.cluster.local/",
            "http://redis:6379/",
            "http://printer.local/",
            "http://db.internal/",
            "http://router.lan/",
            "http://nas.home.arpa/",
            "http://1.0.0.127.in-addr.arpa/",
            "http://host.localdomain/",
            "http://x.test/",
            "http://x.invalid/",
        ] {
            match check(raw, &open()) {
                Err(ImageUrlError::NonPublicHost { .. }) => {}
                other => panic!("{raw}: expected NonPublicHost, got {other:?}"),
            }
        }
    }

    #[test]
    fn names_merely_containing_an_inside_word_pass() {
        for raw in [
            "https://localhost.example.com/a.jpg",
            "https://internal.example.com/a.jpg",
            "https://mylocal.net/a.jpg",
            "https://svc.example.org/a.jpg",
            "https://cdn.example.com/localhost/127.0.0.1/a.jpg",
        ] {
            assert!(check(raw, &open()).is_ok(), "{raw}");
        }
    }

    #[test]
    fn opt_in_and_allow_list() {
        let private = ImageUrlPolicy {
            allow_private_hosts: true,
            ..open()
        };
        assert!(check("http://127.0.0.1/a.jpg", &private).is_ok());
        assert!(check("http://localhost:9/a.jpg", &private).is_ok());
        let hosts = vec!["example.com".to_owned()];
        let listed = ImageUrlPolicy {
            allowed_hosts: &hosts,
            ..open()
        };
        assert!(check("https://cdn.example.com/a.jpg", &listed).is_ok());
        assert!(matches!(
            check("https://example.org/a.jpg", &listed),
            Err(ImageUrlError::NotAllowListed { .. })
        ));
        assert!(matches!(
            check("https://notexample.com/a.jpg", &listed),
            Err(ImageUrlError::NotAllowListed { .. })
        ));
        // The allow-list does not override the inside checks.
        let hosts = vec!["internal".to_owned()];
        let inside = ImageUrlPolicy {
            allowed_hosts: &hosts,
            ..open()
        };
        assert!(matches!(
            check("http://metadata.google.internal/", &inside),
            Err(ImageUrlError::NonPublicHost { .. })
        ));
    }
}
