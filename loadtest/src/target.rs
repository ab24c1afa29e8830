//! Where load goes, and the guard that keeps it on this machine. A load tester pointed at the wrong
//! address is a denial-of-service tool, so targets must be loopback (127.0.0.0/8 or ::1) unless the
//! operator passes `--allow-non-loopback`; every address a name resolves to is checked.

use std::net::{IpAddr, SocketAddr};

use crate::error::LoadError;

/// A resolved, allowed HTTP target.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    /// The `Host` header (and SigV4 `host`) value.
    pub host_header: String,
    /// The socket address connections go to.
    pub addr: SocketAddr,
}

/// Splits `http://host[:port][/]` into (host, port). Only plain HTTP: the sidecar listens on loopback.
pub fn parse_url(url: &str) -> Result<(String, u16), LoadError> {
    let bad = |reason| LoadError::BadTarget {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("needs a scheme, e.g. http://127.0.0.1:7300")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query (the KMS API is POST /)"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok((host.to_string(), authority.port_u16().unwrap_or(80)))
}

/// Whether an address is on this machine's loopback interface.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Checks a literal socket address against the loopback rule.
pub fn check_addr(host: &str, addr: SocketAddr, allow_non_loopback: bool) -> Result<(), LoadError> {
    if allow_non_loopback || is_loopback(addr.ip()) {
        Ok(())
    } else {
        Err(LoadError::NonLoopback {
            host: host.to_string(),
            addr,
        })
    }
}

/// Parses and resolves `url`; refuses non-loopback addresses unless allowed.
pub async fn resolve(url: &str, allow_non_loopback: bool) -> Result<Target, LoadError> {
    let (host, port) = parse_url(url)?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        // A literal is checked before any lookup, so a refusal never depends on DNS.
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| LoadError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect(),
    };
    for addr in &addrs {
        check_addr(&host, *addr, allow_non_loopback)?;
    }
    let addr = *addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .ok_or_else(|| LoadError::NoAddress { host: host.clone() })?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        url: format!("http://{host_header}"),
        host_header,
        addr,
    })
}

/// The admin URL a sidecar usually has next to its KMS port (7300 -> 7301).
pub fn default_admin_url(kms_url: &str) -> Result<String, LoadError> {
    let (host, port) = parse_url(kms_url)?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("http://{host}:{}", port.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_targets_resolve() {
        let t = resolve("http://127.0.0.1:7300", false).await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:7300".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:7300");
        assert_eq!(t.url, "http://127.0.0.1:7300");
        let t = resolve("http://127.8.9.10:1/", false).await.unwrap();
        assert_eq!(t.addr.port(), 1);
        let t = resolve("http://[::1]:7300", false).await.unwrap();
        assert_eq!(t.host_header, "[::1]:7300");
        let t = resolve("http://localhost:7300", false).await.unwrap();
        assert!(is_loopback(t.addr.ip()));
    }

    #[tokio::test]
    async fn non_loopback_is_refused_unless_allowed() {
        for url in [
            "http://10.0.0.1:7300",
            "http://192.168.1.1",
            "http://8.8.8.8:80",
            "http://[2001:db8::1]:7300",
            "http://0.0.0.0:7300",
        ] {
            let err = resolve(url, false).await.unwrap_err();
            assert!(matches!(err, LoadError::NonLoopback { .. }), "{url}: {err}");
            assert!(err.to_string().contains("--allow-non-loopback"));
        }
        // Allowed explicitly: resolution succeeds (no packet is sent by resolving a literal).
        let t = resolve("http://10.0.0.1:7300", true).await.unwrap();
        assert_eq!(t.addr.port(), 7300);
    }

    #[test]
    fn bad_urls_are_rejected() {
        for url in [
            "127.0.0.1:7300",
            "https://127.0.0.1:7300",
            "http://127.0.0.1:7300/path",
            "http://127.0.0.1:7300/?q=1",
            "not a url",
        ] {
            assert!(
                matches!(parse_url(url), Err(LoadError::BadTarget { .. })),
                "{url}"
            );
        }
        assert_eq!(
            default_admin_url("http://127.0.0.1:7300").unwrap(),
            "http://127.0.0.1:7301"
        );
    }
}
