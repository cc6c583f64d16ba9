//! [`RequestContext`]: everything a handler may read about its request: the
//! app, the request head, the unread body, the peer, and the route's `{id}`
//! path segment. It also owns two readings of the request that must be the
//! same everywhere: the client's address (for throttling) and the body
//! (decoded within its limits).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::http::request::Parts;

use super::body::{read_fields, Fields};
use super::error::ApiError;
use crate::app::App;
use crate::domain::audit::Origin;

pub struct RequestContext {
    pub app: Arc<App>,
    pub parts: Parts,
    /// The unread body; [`RequestContext::read_body`] takes it.
    pub body: Option<Incoming>,
    pub peer: SocketAddr,
    /// The `{id}` path segment, on routes that have one.
    pub id: Option<String>,
}

impl RequestContext {
    /// The client's address: the TCP peer, or, when `server.client_ip_header`
    /// names a header set by a trusted proxy, the last entry of all of that
    /// header's lines combined (the one the proxy appended: entries before it
    /// are whatever the client wrote). See [`last_forwarded_address`].
    pub fn client_ip(&self) -> IpAddr {
        let Some(header) = &self.app.settings.server.client_ip_header else {
            return self.peer.ip();
        };
        let lines = self.parts.headers.get_all(header.as_str());
        last_forwarded_address(lines.iter().map(|v| v.as_bytes())).unwrap_or(self.peer.ip())
    }

    /// Reads and decodes the body within `limits.body_bytes` and
    /// `server.header_timeout_secs`.
    pub async fn read_body(&mut self) -> Result<Fields, ApiError> {
        let body = self
            .body
            .take()
            .ok_or_else(|| ApiError::Internal("the body was read twice".into()))?;
        let settings = &self.app.settings;
        read_fields(
            &self.parts,
            body,
            settings.limits.body_bytes,
            Duration::from_secs(settings.server.header_timeout_secs),
        )
        .await
    }

    /// Who and where this request is from, for its audit events: `actor_id`
    /// the authenticated user (if any), the client address as
    /// [`RequestContext::client_ip`] reads it, the `User-Agent`.
    pub fn origin(&self, actor_id: Option<&str>) -> Origin {
        let user_agent = self
            .parts
            .headers
            .get(hyper::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        Origin::new(
            actor_id,
            Some(self.client_ip().to_string()),
            user_agent.as_deref(),
        )
    }

    /// The `{id}` path segment (empty on routes without one, which never ask).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }
}

/// The last entry of a list header's field lines, combined in order as one
/// comma-separated list (RFC 9110 §5.3), read as an address: `1.2.3.4`,
/// `1.2.3.4:5678`, `::1` or `[::1]:5678`. `None` when there is no entry or the
/// last one is not an address: the caller then uses the TCP peer, never an
/// earlier entry (which the client could have written).
pub fn last_forwarded_address<'v>(lines: impl Iterator<Item = &'v [u8]>) -> Option<IpAddr> {
    let last_line = lines.last()?;
    let text = std::str::from_utf8(last_line).ok()?;
    let entry = text.rsplit(',').next()?.trim();
    parse_address(entry)
}

fn parse_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    // `1.2.3.4:5678` and `[::1]:5678` (a port, as some proxies write it).
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    // `[::1]` without a port.
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(lines: &[&str]) -> Option<String> {
        last_forwarded_address(lines.iter().map(|l| l.as_bytes())).map(|ip| ip.to_string())
    }

    #[test]
    fn the_last_entry_of_all_lines_is_the_client() {
        assert_eq!(last(&["1.1.1.1"]).as_deref(), Some("1.1.1.1"));
        assert_eq!(last(&["1.1.1.1, 2.2.2.2"]).as_deref(), Some("2.2.2.2"));
        // HAProxy appends a line of its own: that one counts, not the first.
        assert_eq!(
            last(&["6.6.6.6, 7.7.7.7", "9.9.9.9"]).as_deref(),
            Some("9.9.9.9")
        );
        assert_eq!(last(&["1.2.3.4:5678"]).as_deref(), Some("1.2.3.4"));
        assert_eq!(
            last(&["a, [2001:db8::1]:443"]).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(last(&["::1"]).as_deref(), Some("::1"));
        assert_eq!(last(&["[::1]"]).as_deref(), Some("::1"));
        // An unparseable last entry is not replaced by an earlier one.
        assert_eq!(last(&["1.1.1.1", "unknown"]), None);
        assert_eq!(last(&["1.1.1.1,"]), None);
        assert_eq!(last(&[]), None);
    }
}
