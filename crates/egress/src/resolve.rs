//! Name resolution that only ever hands the connector addresses the policy allows, so the
//! check happens on the very addresses that are connected to (DNS rebinding has no window).

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::policy::{EgressPolicy, Refused};

/// Looks names up. The system resolver in production; tests give fixed answers.
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: String)
    -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            // `name.` is `name` from the root; some resolvers refuse the dot.
            let name = host.strip_suffix('.').unwrap_or(&host);
            Ok(tokio::net::lookup_host((name, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

pub(crate) struct PolicyResolver {
    pub policy: Arc<EgressPolicy>,
    pub lookup: Arc<dyn Lookup>,
}

impl PolicyResolver {
    /// The addresses of `host` the policy allows; refused when it resolves to none of them.
    pub async fn allowed_addrs(
        policy: &EgressPolicy,
        lookup: &dyn Lookup,
        host: &str,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found = lookup.lookup(host.to_string()).await?;
        if policy.allows_host(host) {
            return Ok(found);
        }
        let mut reasons = Vec::new();
        let allowed: Vec<IpAddr> = found
            .into_iter()
            .filter(|ip| match policy.check_ip(*ip) {
                Ok(()) => true,
                Err(reason) => {
                    reasons.push(reason);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            reasons.dedup();
            let why = if reasons.is_empty() {
                "it resolves to no address".to_string()
            } else {
                format!("it resolves to {} addresses", reasons.join(", "))
            };
            return Err(Box::new(Refused::new(host, why)));
        }
        Ok(allowed)
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let ips = Self::allowed_addrs(&policy, lookup.as_ref(), name.as_str()).await?;
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
