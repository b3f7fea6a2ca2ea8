//! Where this server may connect to on a tenant's behalf (a price's `upstreamUrl`, a rail's
//! `rpcUrl`): public addresses only, plus the ranges the operator allows explicitly
//! (`turnpike serve --outbound-allow`). It lives here, below the server, so that the rails' RPC
//! clients and the gateway share one policy.
//!
//! A URL is checked twice. When it is configured ([`OutboundPolicy::validate_url`]): no
//! userinfo, no IPv4 host written in a non-canonical numeric form (`127.1`, `2130706433`,
//! `0x7f.1`, octal: the `url` crate turns all of them into an address, so the host as written is
//! compared with the parsed one), no IP literal outside the allowed addresses, and no DNS name
//! any of whose current addresses is outside them. When it is used: an IP literal is checked
//! again before sending ([`OutboundPolicy::check_url`]; reqwest does not resolve literals) and
//! every DNS name is resolved through [`OutboundResolver`], which drops the addresses not
//! allowed, so a name re-pointed at a private address after validation (DNS rebinding) reaches
//! nothing.
//!
//! The ranges are written out below with the `ipnet` crate (already in the dependency tree
//! through hyper-util) rather than taken from std's `IpAddr::is_global`, which is unstable.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest wait for a DNS answer while validating a URL. A name that does not resolve in time
/// (or at all) is accepted: the connect-time resolver still refuses whatever it resolves to.
pub const VALIDATE_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most allowed ranges an operator may list.
pub const ALLOWED_RANGES_MAX: usize = 64;

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges that are not publicly routable (IANA special-purpose registry, RFC 6890).
pub const V4_NOT_PUBLIC: &[Ipv4Net] = &[
    v4(0, 0, 0, 0, 8),       // "this network", 0.0.0.0 unspecified
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // CGNAT shared address space
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local (cloud metadata at 169.254.169.254)
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments
    v4(192, 0, 2, 0, 24),    // documentation TEST-NET-1
    v4(192, 88, 99, 0, 24),  // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // documentation TEST-NET-2
    v4(203, 0, 113, 0, 24),  // documentation TEST-NET-3
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, 255.255.255.255 broadcast
];

/// IPv6 ranges that are not publicly routable. The ranges that embed an IPv4 address
/// ([`V6_EMBEDDING_V4`]) are judged by that address instead.
pub const V6_NOT_PUBLIC: &[Ipv6Net] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64 (RFC 8215)
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF assignments: Teredo, benchmarking, ORCHID
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// IPv6 ranges that carry an IPv4 address, and the byte offset of that address.
pub const V6_EMBEDDING_V4: &[(Ipv6Net, usize)] = &[
    (v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), 12), // IPv4-mapped
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), 12),      // IPv4-compatible (deprecated)
    (v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), 12), // IPv4-translated (SIIT)
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), 12), // NAT64 well-known prefix
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), 2),  // 6to4
];

/// The IPv4 address an IPv6 address carries, if it is in one of [`V6_EMBEDDING_V4`].
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let octets = ip.octets();
    V6_EMBEDDING_V4
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, at)| Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3]))
}

/// True when `ip` is publicly routable: not loopback, private, link-local, unspecified, CGNAT,
/// multicast, broadcast, documentation, benchmarking, unique local, nor an IPv6 address that
/// embeds such an IPv4 address (mapped, compatible, translated, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => !V4_NOT_PUBLIC.iter().any(|net| net.contains(&ip)),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Some(inner) => is_public(IpAddr::V4(inner)),
            None => !V6_NOT_PUBLIC.iter().any(|net| net.contains(&ip)),
        },
    }
}

/// Why a URL is refused. The messages say what to change and never quote an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// Not an absolute http(s) URL with a host, or it holds whitespace, control characters or
    /// backslashes.
    #[error("must be an absolute http or https URL with a host (no spaces or backslashes)")]
    Malformed,
    /// `user:password@` in the authority.
    #[error("must not contain a user name or password (`user:pass@`)")]
    Userinfo,
    /// An IPv4 host not written as four decimal numbers.
    #[error("writes its IP address in a non-standard form: use four decimal numbers (a.b.c.d)")]
    NumericForm,
    /// The host is, or resolves to, an address that is not public and not allowed.
    #[error(
        "points to an address this server does not connect to (loopback, private, link-local \
         or otherwise not public)"
    )]
    NotPublic,
}

/// Where a checked URL connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP literal (already checked).
    Ip(IpAddr),
    /// A DNS name and the port.
    Name(String, u16),
}

/// The public addresses plus the operator's allowed ranges (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allowed: Arc<[IpNet]>,
}

impl OutboundPolicy {
    /// Public addresses plus `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        let allowed: Vec<IpNet> = allowed.iter().map(IpNet::trunc).collect();
        Self {
            allowed: allowed.into(),
        }
    }

    /// Parse a comma-separated list of CIDR ranges (`127.0.0.0/8,::1/128`; a bare address
    /// stands for itself). Empty items are skipped.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => IpNet::from(
                    item.parse::<IpAddr>()
                        .map_err(|_| format!("`{item}` is not a CIDR range (e.g. 10.0.0.0/8)"))?,
                ),
            };
            allowed.push(net);
        }
        if allowed.len() > ALLOWED_RANGES_MAX {
            return Err(format!(
                "at most {ALLOWED_RANGES_MAX} ranges may be allowed"
            ));
        }
        Ok(Self::new(allowed))
    }

    /// The operator's allowed ranges.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// True when this server may connect to `ip`: public, or inside an allowed range (an
    /// IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let plain = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&plain))
            || is_public(ip)
    }

    /// The checks that need no DNS: syntax, userinfo, the numeric form of an IPv4 host, and an
    /// IP literal's address. Run before every use of a URL as well as at validation.
    pub fn check_url(&self, url: &str) -> Result<Target, OutboundError> {
        if url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return Err(OutboundError::Malformed);
        }
        let parsed = Url::parse(url).map_err(|_| OutboundError::Malformed)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(OutboundError::Malformed);
        }
        let written = written_host(url)?;
        // The `url` crate writes an IP host canonically (`127.1` becomes `127.0.0.1`, `[::1]`
        // stays bracketed); anything else is a DNS name, lowercased and punycoded.
        let host = parsed.host_str().ok_or(OutboundError::Malformed)?;
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            if !written.eq_ignore_ascii_case(host) {
                return Err(OutboundError::NumericForm);
            }
            return self.literal(IpAddr::V4(ip));
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = inner
                .parse::<Ipv6Addr>()
                .map_err(|_| OutboundError::Malformed)?;
            return self.literal(IpAddr::V6(ip));
        }
        // `localhost` and its subdomains are loopback by definition (RFC 6761), whatever a
        // resolver says of them (`localhost.` may reach the DNS).
        let bare = host.trim_end_matches('.');
        if (bare == "localhost" || bare.ends_with(".localhost"))
            && !self.allows(IpAddr::V4(Ipv4Addr::LOCALHOST))
        {
            return Err(OutboundError::NotPublic);
        }
        let port = parsed
            .port_or_known_default()
            .ok_or(OutboundError::Malformed)?;
        Ok(Target::Name(host.to_owned(), port))
    }

    fn literal(&self, ip: IpAddr) -> Result<Target, OutboundError> {
        if self.allows(ip) {
            Ok(Target::Ip(ip))
        } else {
            Err(OutboundError::NotPublic)
        }
    }

    /// [`Self::check_url`], then the DNS name's current addresses: refused when any of them is
    /// not allowed. A name that does not resolve (within [`VALIDATE_RESOLVE_TIMEOUT`]) passes:
    /// whatever it resolves to later goes through [`OutboundResolver`].
    pub async fn validate_url(&self, url: &str) -> Result<(), OutboundError> {
        let Target::Name(name, port) = self.check_url(url)? else {
            return Ok(());
        };
        let lookup = tokio::net::lookup_host((name.as_str(), port));
        match tokio::time::timeout(VALIDATE_RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut addrs = addrs;
                if addrs.any(|addr| !self.allows(addr.ip())) {
                    return Err(OutboundError::NotPublic);
                }
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Ok(()),
        }
    }

    /// The allowed ones of `addrs`, or an error when none is.
    pub fn filter(
        &self,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, NoAllowedAddress> {
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| self.allows(addr.ip()))
            .collect();
        if kept.is_empty() {
            Err(NoAllowedAddress)
        } else {
            Ok(kept)
        }
    }

    /// The DNS resolver for reqwest clients that connect under this policy.
    pub fn resolver(&self) -> OutboundResolver {
        OutboundResolver {
            policy: self.clone(),
        }
    }

    /// `builder` with this policy's resolver installed.
    pub fn guard(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.dns_resolver(Arc::new(self.resolver()))
    }
}

/// The host of `url` as written (between `://` and the port, path, query or fragment); an
/// `@` in the authority is userinfo.
fn written_host(url: &str) -> Result<&str, OutboundError> {
    let (_, rest) = url.split_once("://").ok_or(OutboundError::Malformed)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(OutboundError::Userinfo);
    }
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or(OutboundError::Malformed)?;
        return Ok(&authority[..=end]);
    }
    match authority.split(':').next() {
        Some(host) if !host.is_empty() => Ok(host),
        _ => Err(OutboundError::Malformed),
    }
}

/// A name none of whose addresses the policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAllowedAddress;

impl fmt::Display for NoAllowedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the name resolves to no address this server may connect to")
    }
}

impl std::error::Error for NoAllowedAddress {}

/// A reqwest DNS resolver that keeps only the addresses its policy allows (the system
/// resolver, through tokio, underneath).
#[derive(Debug, Clone)]
pub struct OutboundResolver {
    policy: OutboundPolicy,
}

impl Resolve for OutboundResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = policy.filter(addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn loopback_allowed() -> OutboundPolicy {
        OutboundPolicy::parse("127.0.0.0/8,::1/128").expect("ranges")
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for text in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_public(ip(text)), "{text} counted as public");
            assert!(
                !OutboundPolicy::default().allows(ip(text)),
                "{text} allowed"
            );
        }
    }

    #[test]
    fn v6_forms_embedding_a_private_v4_are_refused() {
        for text in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2002:a9fe:a9fe::",
        ] {
            assert!(!is_public(ip(text)), "{text} counted as public");
        }
        for text in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1"] {
            assert!(is_public(ip(text)), "{text} counted as not public");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "198.20.0.1",
            "192.0.3.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert!(is_public(ip(text)), "{text} counted as not public");
            assert!(OutboundPolicy::default().allows(ip(text)));
        }
    }

    #[test]
    fn allowed_ranges_override() {
        let policy = loopback_allowed();
        for text in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"] {
            assert!(policy.allows(ip(text)), "{text} not allowed");
        }
        for text in ["10.0.0.1", "169.254.169.254", "::2", "fe80::1"] {
            assert!(!policy.allows(ip(text)), "{text} allowed");
        }
        let one = OutboundPolicy::parse(" 10.1.2.3 , ,10.9.0.0/16").expect("ranges");
        assert!(one.allows(ip("10.1.2.3")));
        assert!(!one.allows(ip("10.1.2.4")));
        assert!(one.allows(ip("10.9.200.1")));
        // A range written with host bits stands for its network.
        let wide = OutboundPolicy::parse("192.168.1.77/24").expect("range");
        assert!(wide.allows(ip("192.168.1.1")));
        assert!(!wide.allows(ip("192.168.2.1")));
        assert_eq!(
            OutboundPolicy::parse("").expect("empty"),
            OutboundPolicy::default()
        );
        for bad in ["nope", "10.0.0.0/33", "10.0.0", "::1/129"] {
            assert!(OutboundPolicy::parse(bad).is_err(), "{bad} parsed");
        }
        let many = vec!["10.0.0.1"; ALLOWED_RANGES_MAX + 1].join(",");
        assert!(OutboundPolicy::parse(&many).is_err());
    }

    #[test]
    fn urls_with_userinfo_are_refused() {
        let policy = OutboundPolicy::default();
        for url in [
            "http://u:p@example.com/",
            "http://u@example.com",
            "http://@example.com",
            "https://:p@example.com/x",
            "http://example.com@127.0.0.1/",
        ] {
            assert_eq!(policy.check_url(url), Err(OutboundError::Userinfo), "{url}");
        }
    }

    #[test]
    fn numeric_hosts_in_other_forms_are_refused_even_when_allowed() {
        for policy in [OutboundPolicy::default(), loopback_allowed()] {
            for url in [
                "http://127.1/",
                "http://127.0.1/",
                "http://2130706433/",
                "http://0x7f.1/",
                "http://0x7f000001/",
                "http://0177.0.0.1/",
                "http://0/",
                "http://127.0.0.1./",
                "http://8.8.8.010/",
                "http://%31%32%37.0.0.1/",
                "http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/",
            ] {
                assert_eq!(
                    policy.check_url(url),
                    Err(OutboundError::NumericForm),
                    "{url}"
                );
            }
        }
    }

    #[test]
    fn ip_literals_outside_the_policy_are_refused() {
        let strict = OutboundPolicy::default();
        for url in [
            "http://127.0.0.1:8545",
            "http://127.0.0.1:9/metrics",
            "http://[::1]:80/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://10.0.0.1/",
            "https://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]:8080/",
            "http://[2002:7f00:1::1]/",
        ] {
            assert_eq!(
                strict.check_url(url),
                Err(OutboundError::NotPublic),
                "{url}"
            );
        }
        let loopback = loopback_allowed();
        assert_eq!(
            loopback.check_url("http://127.0.0.1:8545"),
            Ok(Target::Ip(ip("127.0.0.1")))
        );
        assert_eq!(
            loopback.check_url("http://[::1]:80/x"),
            Ok(Target::Ip(ip("::1")))
        );
        assert_eq!(
            loopback.check_url("http://169.254.169.254/"),
            Err(OutboundError::NotPublic)
        );
    }

    #[test]
    fn public_literals_and_names_pass_the_static_check() {
        let policy = OutboundPolicy::default();
        assert_eq!(
            policy.check_url("http://8.8.8.8:8080/x"),
            Ok(Target::Ip(ip("8.8.8.8")))
        );
        assert_eq!(
            policy.check_url("https://API.Example.com/v1"),
            Ok(Target::Name("api.example.com".into(), 443))
        );
        for url in [
            "http://localhost:8080",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert_eq!(
                policy.check_url(url),
                Err(OutboundError::NotPublic),
                "{url}"
            );
        }
        assert_eq!(
            loopback_allowed().check_url("http://localhost:8080"),
            Ok(Target::Name("localhost".into(), 8080))
        );
        for url in [
            "ftp://example.com/",
            "http://exa mple.com/",
            "http://example.com\\@127.0.0.1/",
            "http://example.com/\t",
            "http:///x",
            "http:///127.0.0.1/",
            "http://:80/",
            "example.com",
            "file:///etc/passwd",
        ] {
            assert_eq!(
                policy.check_url(url),
                Err(OutboundError::Malformed),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_validation() {
        assert_eq!(
            OutboundPolicy::default()
                .validate_url("http://localhost:1234/x")
                .await,
            Err(OutboundError::NotPublic)
        );
        assert_eq!(
            loopback_allowed()
                .validate_url("http://localhost:1234/x")
                .await,
            Ok(())
        );
        // Not resolvable now: accepted (the connect-time resolver decides later).
        assert_eq!(
            OutboundPolicy::default()
                .validate_url("http://upstream.invalid/")
                .await,
            Ok(())
        );
        assert_eq!(
            OutboundPolicy::default()
                .validate_url("http://127.1/")
                .await,
            Err(OutboundError::NumericForm)
        );
    }

    #[test]
    fn filtering_keeps_only_allowed_addresses() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("socket address");
        let rebound = [
            addr("127.0.0.1:80"),
            addr("8.8.8.8:80"),
            addr("[::1]:80"),
            addr("[::ffff:10.0.0.1]:80"),
            addr("[2606:4700:4700::1111]:80"),
        ];
        assert_eq!(
            OutboundPolicy::default().filter(rebound),
            Ok(vec![addr("8.8.8.8:80"), addr("[2606:4700:4700::1111]:80")])
        );
        assert_eq!(
            OutboundPolicy::default().filter([addr("169.254.169.254:80"), addr("[::1]:80")]),
            Err(NoAllowedAddress)
        );
        assert_eq!(
            loopback_allowed().filter([addr("127.0.0.1:80"), addr("10.0.0.1:80")]),
            Ok(vec![addr("127.0.0.1:80")])
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_with_no_allowed_address() {
        let name = |s: &str| s.parse::<Name>().expect("a name");
        let refused = OutboundPolicy::default()
            .resolver()
            .resolve(name("localhost"))
            .await;
        let err = refused.err().expect("localhost refused");
        assert!(err.is::<NoAllowedAddress>(), "{err}");
        let kept: Vec<SocketAddr> = loopback_allowed()
            .resolver()
            .resolve(name("localhost"))
            .await
            .expect("localhost allowed")
            .collect();
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|a| a.ip().is_loopback()), "{kept:?}");
    }
}
