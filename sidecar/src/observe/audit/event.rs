//! The identifying members of an audit event in forms that cost no heap allocation per call: the
//! request id inline, the client's address as the socket address, the principal as the shared
//! credential it came with. They are turned into text only where it is written (the audit writer
//! thread, a response header), never copied into owned strings on the request path.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::auth::Principal;

/// Longest request id: 8 + 1 + 16 hex digits, with room to spare.
const MAX_ID: usize = 32;

/// A request id held inline (`Copy`): `<8 hex digits of a per-process prefix>-<counter in hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_ID],
}

impl RequestId {
    /// `{prefix:08x}-{counter:012x}`.
    pub fn new(prefix: u32, counter: u64) -> Self {
        let mut id = Self {
            len: 0,
            bytes: [0; MAX_ID],
        };
        let mut w = Cursor(&mut id);
        // Writing at most 25 ASCII bytes into 32 cannot fail.
        let _ = fmt::Write::write_fmt(&mut w, format_args!("{prefix:08x}-{counter:012x}"));
        id
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever written into `bytes`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// Appends to a [`RequestId`]'s bytes; fails rather than truncating.
struct Cursor<'a>(&'a mut RequestId);

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = usize::from(self.0.len);
        let end = start + s.len();
        let slot = self.0.bytes.get_mut(start..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.0.len = u8::try_from(end).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Any text of at most 32 bytes (tests, tools); longer text is refused.
impl TryFrom<&str> for RequestId {
    type Error = fmt::Error;
    fn try_from(s: &str) -> Result<Self, fmt::Error> {
        let mut id = Self {
            len: 0,
            bytes: [0; MAX_ID],
        };
        fmt::Write::write_str(&mut Cursor(&mut id), s)?;
        Ok(id)
    }
}

impl Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Where a call came from: a TCP peer, or a name (a Unix socket's path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Addr(SocketAddr),
    Name(Arc<str>),
}

impl From<SocketAddr> for Source {
    fn from(a: SocketAddr) -> Self {
        Source::Addr(a)
    }
}

impl From<String> for Source {
    fn from(s: String) -> Self {
        Source::Name(s.into())
    }
}

impl From<&str> for Source {
    fn from(s: &str) -> Self {
        Source::Name(s.into())
    }
}

impl From<Arc<str>> for Source {
    fn from(s: Arc<str>) -> Self {
        Source::Name(s)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Addr(a) => fmt::Display::fmt(a, f),
            Source::Name(n) => f.write_str(n),
        }
    }
}

/// The principal an audit record names: the caller's credential (shared, not copied), another
/// name (a revoked credential's), or a fixed label such as `unknown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalName {
    Caller(Arc<Principal>),
    Owned(String),
    Static(&'static str),
}

impl PrincipalName {
    pub fn as_str(&self) -> &str {
        match self {
            PrincipalName::Caller(p) => &p.name,
            PrincipalName::Owned(s) => s,
            PrincipalName::Static(s) => s,
        }
    }
}

impl From<&str> for PrincipalName {
    fn from(s: &str) -> Self {
        PrincipalName::Owned(s.to_owned())
    }
}

impl From<String> for PrincipalName {
    fn from(s: String) -> Self {
        PrincipalName::Owned(s)
    }
}

// Serialized as the text they print (without allocating: serde_json writes `collect_str` escaped,
// straight into its output).
impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Source::Addr(a) => s.collect_str(a),
            Source::Name(n) => s.serialize_str(n),
        }
    }
}

impl Serialize for PrincipalName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_their_format_inline() {
        assert_eq!(
            RequestId::new(0xdead_beef, 42).as_str(),
            "deadbeef-00000000002a"
        );
        assert_eq!(
            RequestId::new(1, u64::MAX).to_string(),
            "00000001-ffffffffffffffff"
        );
        assert_eq!(RequestId::try_from("req-1").unwrap().as_str(), "req-1");
        assert!(RequestId::try_from("x".repeat(33).as_str()).is_err());
        assert_eq!(
            format!("{:?}", RequestId::try_from("a\"b").unwrap()),
            "\"a\\\"b\""
        );
    }

    #[test]
    fn sources_print_as_before() {
        let addr: SocketAddr = "127.0.0.1:50412".parse().unwrap();
        assert_eq!(Source::from(addr).to_string(), "127.0.0.1:50412");
        let v6: SocketAddr = "[::1]:7300".parse().unwrap();
        assert_eq!(Source::from(v6).to_string(), "[::1]:7300");
        assert_eq!(Source::from("/run/kms.sock").to_string(), "/run/kms.sock");
    }
}
