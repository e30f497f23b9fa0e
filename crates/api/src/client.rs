//! The client's address: the connecting peer, or — when that peer is one of the configured
//! reverse proxies (`http.trusted_proxies`) — the right-most `X-Forwarded-For` entry that is
//! not itself a trusted proxy. Entries left of it were written by the client and prove
//! nothing. Sign-in throttling, the Gupshup allowlist and the audit trail all use this address.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::Response,
};
use ipnet::IpNet;

use crate::AppState;

/// Set on every request served with connection info, before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`[::1]:80`, `1.2.3.4:80`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client behind `peer`, trusting `X-Forwarded-For` only as far as trusted proxies wrote it.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
    let mut client = peer.to_canonical();
    if !trusted(client, proxies) {
        return client;
    }
    // Each proxy appends the address it saw; several headers read as one list, in order.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().unwrap_or(""))
        .flat_map(|value| value.split(','))
        .collect();
    for entry in entries.into_iter().rev() {
        // Garbage cannot have come from a trusted proxy: stop at the last address that did.
        let Some(ip) = parse_entry(entry) else {
            return client;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

/// Middleware: records the [`ClientAddr`] of every request.
pub async fn resolve(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        let client = client_address(peer.ip(), request.headers(), &state.trusted_proxies);
        request.extensions_mut().insert(ClientAddr(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxies: Vec<IpNet> = vec![
            "10.0.0.1/32".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        let spoofed = headers(&["198.51.100.1, 203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("192.0.2.5"), &spoofed, &proxies),
            ip("192.0.2.5")
        );
        // A trusted proxy's: the right-most untrusted entry, not the client-written ones.
        assert_eq!(
            client_address(ip("10.0.0.1"), &spoofed, &proxies),
            ip("203.0.113.9")
        );
        // Chains of trusted proxies are skipped, across several headers.
        let chained = headers(&["198.51.100.1, 203.0.113.9", "10.1.4.4:8080, 10.1.2.3"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &chained, &proxies),
            ip("203.0.113.9")
        );
        // Only proxies: the left-most of them. Garbage: the last proxy that wrote sense.
        let proxies_only = headers(&["10.1.2.3"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &proxies_only, &proxies),
            ip("10.1.2.3")
        );
        let garbage = headers(&["203.0.113.9, nonsense, 10.1.2.3"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &garbage, &proxies),
            ip("10.1.2.3")
        );
        // No header, or no proxies configured: the peer.
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &spoofed, &[]),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(
                ip("::ffff:10.0.0.1"),
                &headers(&["[2001:db8::7]:443"]),
                &proxies
            ),
            ip("2001:db8::7")
        );
    }
}
