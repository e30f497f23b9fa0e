//! Which addresses a tenant-influenced request may reach: everything public, nothing internal,
//! plus what the operator explicitly allows.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::LazyLock,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use waypost_core::{Error, ErrorCode};

/// Why an address is internal, by the ranges of IANA's special-purpose registries.
const BLOCKED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved or broadcast"),
];

/// IPv4-mapped addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address they carry; the
/// other forms that embed or translate to IPv4 are refused whole.
const BLOCKED_V6: &[(&str, &str)] = &[
    ("::/96", "unspecified, loopback or IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignment"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

fn table<N: FromStr>(entries: &[(&str, &'static str)]) -> Vec<(N, &'static str)> {
    entries
        .iter()
        .filter_map(|(net, why)| net.parse().ok().map(|n| (n, *why)))
        .collect()
}

static V4: LazyLock<Vec<(Ipv4Net, &'static str)>> = LazyLock::new(|| table(BLOCKED_V4));
static V6: LazyLock<Vec<(Ipv6Net, &'static str)>> = LazyLock::new(|| table(BLOCKED_V6));

/// Why `ip` is not a public address, or `None` when it is.
pub fn internal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => V4.iter().find(|(n, _)| n.contains(&v4)).map(|(_, w)| *w),
        IpAddr::V6(v6) => V6.iter().find(|(n, _)| n.contains(&v6)).map(|(_, w)| *w),
    }
}

/// A destination the policy refuses: the host (never the path, query or credentials of the
/// URL) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the egress policy refuses {}: {}",
            self.host, self.reason
        )
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        Error::new(ErrorCode::EgressRefused, refused.to_string())
    }
}

impl Refused {
    pub(crate) fn new(host: impl Into<String>, reason: impl Into<String>) -> Self {
        let refused = Self {
            host: host.into(),
            reason: reason.into(),
        };
        tracing::warn!(host = %refused.host, reason = %refused.reason, "egress refused");
        metrics::counter!("waypost_egress_refused_total").increment(1);
        refused
    }
}

/// One operator exception: a network, one address and port, or a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    Net(IpNet),
    Socket(SocketAddr),
    Host(String),
}

impl FromStr for Allow {
    type Err = Error;

    fn from_str(entry: &str) -> Result<Self, Error> {
        let entry = entry.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        if let Ok(socket) = entry.parse::<SocketAddr>() {
            return Ok(Self::Socket(socket));
        }
        match url::Host::parse(entry) {
            Ok(url::Host::Domain(name)) if !name.is_empty() => Ok(Self::Host(normalize(&name))),
            _ => Err(Error::new(
                ErrorCode::InvalidConfig,
                format!(
                    "egress.allow: {entry:?} is not a network (10.0.0.0/8), an address, an address:port or a host name"
                ),
            )),
        }
    }
}

/// Host names compare without case and without the root's trailing dot.
fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The egress policy: public addresses only, unless the operator allowed more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Allow>,
}

impl EgressPolicy {
    /// Parses `[egress] allow`: CIDR networks, addresses, `address:port` pairs and host names.
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<Self, Error> {
        let allow = allow
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Also allows this one address and port (the embedded demo's own simulator), and nothing
    /// else on that address.
    #[must_use]
    pub fn allowing_socket(mut self, socket: SocketAddr) -> Self {
        self.allow.push(Allow::Socket(socket));
        self
    }

    /// Whether the operator allowed this host name whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize(host);
        self.allow
            .iter()
            .any(|a| matches!(a, Allow::Host(h) if *h == host))
    }

    /// Checks an address a name resolved to (the port is not known yet at that point).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), &'static str> {
        let canonical = ip.to_canonical();
        let allowed = self
            .allow
            .iter()
            .any(|a| matches!(a, Allow::Net(net) if net.contains(&canonical) || net.contains(&ip)));
        match internal_reason(ip) {
            Some(reason) if !allowed => Err(reason),
            _ => Ok(()),
        }
    }

    fn check_socket(&self, ip: IpAddr, port: u16) -> Result<(), &'static str> {
        let canonical = SocketAddr::new(ip.to_canonical(), port);
        if self
            .allow
            .iter()
            .any(|a| matches!(a, Allow::Socket(s) if SocketAddr::new(s.ip().to_canonical(), s.port()) == canonical))
        {
            return Ok(());
        }
        self.check_ip(ip)
    }

    /// Checks what can be checked before connecting: the scheme, and the address when the URL
    /// names one. Host names are checked on every address they resolve to, at connect time.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default().to_string();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::new(host, "only http and https are allowed"));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        let ip = match url.host() {
            None => return Err(Refused::new(host, "the URL names no host")),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        self.check_socket(ip, port)
            .map_err(|reason| Refused::new(host, format!("a {reason} address")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_parses() {
        assert_eq!(V4.len(), BLOCKED_V4.len());
        assert_eq!(V6.len(), BLOCKED_V6.len());
    }

    #[test]
    fn mapped_addresses_are_judged_as_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(internal_reason(mapped), Some("loopback"));
        let public: IpAddr = "::ffff:8.8.8.8".parse().unwrap();
        assert_eq!(internal_reason(public), None);
    }

    #[test]
    fn allow_entries_parse_or_name_the_bad_one() {
        let policy =
            EgressPolicy::new(&["127.0.0.1/32", "sim.internal.", "10.1.2.3", "[::1]:8080"]);
        assert!(policy.is_ok());
        let err = EgressPolicy::new(&["not a host!"])
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not a host!")));
    }
}
