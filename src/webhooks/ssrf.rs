//! Where webhooks may not go: addresses inside the server's own networks (loopback,
//! private, link-local and so cloud metadata, carrier-grade NAT, multicast, reserved), in
//! every IPv6 spelling of them. Checked when a subscription is made and again at every
//! delivery, on the addresses the name resolves to then, by the resolver the delivery
//! client connects with (so a name cannot resolve to a public address when checked and a
//! private one when used). `WEBHOOK_ALLOW_PRIVATE=true` lifts it (tests, closed networks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `ip` is outside the public internet.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Carrier-grade NAT 100.64.0.0/10, benchmarking 198.18.0.0/15, IETF 192.0.0.0/24,
        // reserved 240.0.0.0/4.
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4 written as IPv6: mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64
    // 64:ff9b::a.b.c.d, and 6to4 2002:AABB:CCDD:: all reach the IPv4 address inside.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2]));
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 (deprecated),
        // documentation 2001:db8::/32.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x2001 && s[1] == 0x0db8)
}

fn embedded(hi: u16, lo: u16) -> Ipv4Addr {
    let [a, b] = hi.to_be_bytes();
    let [c, d] = lo.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Resolves `host`, refusing it when any of its addresses is forbidden (unless allowed).
pub async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    // An address literal resolves to itself.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("{host} did not resolve in time"))?
            .map_err(|_| format!("{host} does not resolve"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
            return Err(format!(
                "{host} resolves to {}, a private, loopback, link-local or reserved address",
                bad.ip()
            ));
        }
    }
    Ok(addrs)
}

/// The delivery client's resolver: [`resolve`] at every connection.
pub struct Guarded {
    pub allow_private: bool,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve(&host, 0, allow).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn private_loopback_link_local_and_their_ipv6_spellings_are_forbidden() {
        for s in [
            "127.0.0.1",
            "127.255.1.2",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.9.9",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(forbidden(ip(s)), "{s} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert!(!forbidden(ip(s)), "{s} should be allowed");
        }
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to() {
        let refused = resolve("localhost", 443, false).await;
        assert!(refused.is_err_and(|e| e.contains("resolves to")));
        assert!(resolve("localhost", 443, true).await.is_ok());
        assert!(resolve("[::1]", 443, false).await.is_err());
    }
}
