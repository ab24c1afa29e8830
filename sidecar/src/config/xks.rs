//! The XKS proxy's settings: where it listens (`--xks-listen`), and from a file of its own
//! (`--xks-config`, TOML, never flags: it holds secrets) the URI path prefixes AWS KMS calls, the
//! SigV4 credentials of each (one or two at once, so they can be rotated), the principal each
//! prefix's calls run as, and which sidecar key each external key id names with which usages.
//! Validated here, with the spec's lengths and alphabets, so the front-end (`frontend/xks/`) only
//! sees usable [`XksSettings`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use super::{Config, Options, Region};

/// The spec's limits: `XksProxyUriPath` length, external key id length.
const MAX_URI_PATH: usize = 128;
const MAX_EXTERNAL_KEY_ID: usize = 128;
/// Every `XksProxyUriPath` ends with this.
pub const API_PATH: &str = "/kms/xks/v1";
/// Credentials accepted at once per prefix (the spec asks for at least two, for rotation).
const MAX_CREDENTIALS: usize = 2;
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Which operations an external key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XksKeyUsage {
    EncryptDecrypt,
    Encrypt,
    Decrypt,
    None,
}

impl XksKeyUsage {
    pub fn encrypt(self) -> bool {
        matches!(self, XksKeyUsage::EncryptDecrypt | XksKeyUsage::Encrypt)
    }
    pub fn decrypt(self) -> bool {
        matches!(self, XksKeyUsage::EncryptDecrypt | XksKeyUsage::Decrypt)
    }
}

/// One SigV4 credential AWS KMS signs with.
#[derive(Clone)]
pub struct XksCredential {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

impl std::fmt::Debug for XksCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XksCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .finish()
    }
}

/// One URI path prefix (an external key store in AWS KMS).
#[derive(Debug, Clone)]
pub struct XksPrefix {
    /// The `XksProxyUriPath` configured in AWS KMS, ending in `/kms/xks/v1`.
    pub uri_path: String,
    /// The principal its calls run as (key policies, rate limits, metrics, audit).
    pub principal: String,
    pub credentials: Vec<XksCredential>,
}

/// What an external key id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksKey {
    /// The sidecar key: id, ARN, alias name or alias ARN.
    pub key_id: String,
    pub usage: XksKeyUsage,
}

/// A validated XKS proxy configuration (present only when `xks_listen` is set).
#[derive(Debug, Clone)]
pub struct XksSettings {
    pub listen: SocketAddr,
    /// The region AWS KMS signs for (the credential scope); the sidecar's region unless set.
    pub region: String,
    pub prefixes: Vec<XksPrefix>,
    /// External key id -> sidecar key.
    pub keys: BTreeMap<String, XksKey>,
    /// The key GetHealthStatus runs its round trip under (a test key, not one AWS KMS uses).
    pub health_key_id: Option<String>,
    /// `xksProxyFleetSize` in GetHealthStatus.
    pub fleet_size: u32,
}

impl XksSettings {
    /// Every prefix's principal name (for the rate limits' named principals).
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.prefixes.iter().map(|p| p.principal.as_str())
    }
}

/// The `--xks-config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XksFile {
    region: Option<String>,
    health_key_id: Option<String>,
    fleet_size: Option<u32>,
    #[serde(default)]
    prefixes: Vec<PrefixFile>,
    #[serde(default)]
    keys: BTreeMap<String, KeyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixFile {
    uri_path: String,
    principal: String,
    credentials: Vec<CredentialFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    access_key_id: String,
    #[serde(deserialize_with = "secret")]
    secret_access_key: SecretString,
}

/// A secret member, kept in a `SecretString` from the moment it is parsed.
fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

impl std::fmt::Debug for CredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialFile([redacted])")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    key_id: String,
    usage: Option<XksKeyUsage>,
}

/// Builds the settings from flags/environment over the file; `None` when the proxy is off.
pub(super) fn build(
    cli: &Options,
    file: &Options,
    region: &Region,
) -> anyhow::Result<Option<XksSettings>> {
    let listen = cli.xks_listen.or(file.xks_listen);
    let path = cli.xks_config.clone().or_else(|| file.xks_config.clone());
    let Some(listen) = listen else {
        if path.is_some() {
            bail!("xks_config needs xks_listen (the XKS proxy is off without it)");
        }
        return Ok(None);
    };
    let Some(path) = path else {
        bail!(
            "xks_listen is set but xks_config is not: name the file with the XKS URI prefixes, credentials and keys"
        );
    };
    let text = read(&path)?;
    let parsed: XksFile = toml::from_str(&text)
        .with_context(|| format!("XKS config file {} is invalid", path.display()))?;
    validate(listen, parsed, region)
        .map(Some)
        .with_context(|| format!("XKS config file {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read XKS config file {}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!("XKS config file {} is too large", path.display());
    }
    Ok(text)
}

fn validate(listen: SocketAddr, f: XksFile, region: &Region) -> anyhow::Result<XksSettings> {
    let region = match f.region {
        Some(r) => Region::parse(&r)?.0,
        None => region.0.clone(),
    };
    if f.prefixes.is_empty() {
        bail!("at least one [[prefixes]] entry is required");
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut paths = std::collections::BTreeSet::new();
    let mut prefixes = Vec::with_capacity(f.prefixes.len());
    for p in f.prefixes {
        check_uri_path(&p.uri_path)?;
        if !paths.insert(p.uri_path.clone()) {
            bail!("uri_path {:?} is configured twice", p.uri_path);
        }
        check_principal(&p.principal)?;
        if p.credentials.is_empty() || p.credentials.len() > MAX_CREDENTIALS {
            bail!(
                "uri_path {:?} needs 1 to {MAX_CREDENTIALS} credentials (two while rotating)",
                p.uri_path
            );
        }
        let mut credentials = Vec::with_capacity(p.credentials.len());
        for c in p.credentials {
            check_access_key_id(&c.access_key_id)?;
            check_secret(&c.secret_access_key)
                .with_context(|| format!("the secret of access key id {}", c.access_key_id))?;
            if !ids.insert(c.access_key_id.clone()) {
                bail!(
                    "access key id {} is configured twice: each must name one secret",
                    c.access_key_id
                );
            }
            credentials.push(XksCredential {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
            });
        }
        prefixes.push(XksPrefix {
            uri_path: p.uri_path,
            principal: p.principal,
            credentials,
        });
    }
    let mut keys = BTreeMap::new();
    for (external, k) in f.keys {
        check_external_key_id(&external)?;
        if k.key_id.trim().is_empty() {
            bail!("keys.{external}.key_id is empty");
        }
        keys.insert(
            external,
            XksKey {
                key_id: k.key_id,
                usage: k.usage.unwrap_or(XksKeyUsage::EncryptDecrypt),
            },
        );
    }
    let fleet_size = f.fleet_size.unwrap_or(1);
    if fleet_size == 0 {
        bail!("fleet_size must be at least 1");
    }
    Ok(XksSettings {
        listen,
        region,
        prefixes,
        keys,
        health_key_id: f.health_key_id,
        fleet_size,
    })
}

/// `XksProxyUriPath`: at most 128 characters of `a-zA-Z0-9/-_`, ending in `/kms/xks/v1`.
fn check_uri_path(p: &str) -> anyhow::Result<()> {
    let ok = p.len() <= MAX_URI_PATH
        && p.starts_with('/')
        && p.ends_with(API_PATH)
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'));
    if !ok {
        bail!(
            "uri_path {p:?} must be at most {MAX_URI_PATH} characters of a-z, A-Z, 0-9, '/', '-', '_', start with '/' and end with {API_PATH}"
        );
    }
    Ok(())
}

/// Access key ids: 20 to 30 characters, `A-Z` and `2-7` (the spec and the AWS KMS console).
pub fn check_access_key_id(id: &str) -> anyhow::Result<()> {
    if !(20..=30).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    {
        bail!("access key id {id:?} must be 20 to 30 characters of A-Z and 2-7");
    }
    Ok(())
}

/// Secret access keys: 43 to 64 characters of `A-Za-z0-9+/=` (the AWS KMS console's rule).
pub fn check_secret(secret: &SecretString) -> anyhow::Result<()> {
    use secrecy::ExposeSecret as _;
    let s = secret.expose_secret();
    if !(43..=64).contains(&s.len())
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        bail!("a secret access key must be 43 to 64 characters of A-Z, a-z, 0-9, '+', '/', '='");
    }
    Ok(())
}

/// External key ids: 1 to 128 characters of `A-Za-z0-9-._`.
pub fn check_external_key_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty()
        || id.len() > MAX_EXTERNAL_KEY_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        bail!(
            "external key id {id:?} must be 1 to {MAX_EXTERNAL_KEY_ID} characters of A-Z, a-z, 0-9, '-', '.', '_'"
        );
    }
    Ok(())
}

fn check_principal(p: &str) -> anyhow::Result<()> {
    if p.is_empty()
        || p.len() > 64
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        bail!("principal {p:?} must be 1-64 characters of letters, digits and +=,.@_-");
    }
    Ok(())
}

impl Config {
    /// The XKS proxy, when `xks_listen` is set.
    pub fn xks(&self) -> Option<&XksSettings> {
        self.xks.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKSCXKSTESTKEY2345672";
    const SECRET: &str = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE";

    fn file(extra: &str) -> String {
        format!(
            r#"
[[prefixes]]
uri_path = "/tenant-a/kms/xks/v1"
principal = "xks-a"
credentials = [{{ access_key_id = "{ID}", secret_access_key = "{SECRET}" }}]
{extra}
[keys.ext-1]
key_id = "alias/xks"
usage = "encrypt"
"#
        )
    }

    fn parse(text: &str) -> anyhow::Result<XksSettings> {
        let f: XksFile = toml::from_str(text)?;
        validate(
            "127.0.0.1:0".parse()?,
            f,
            &Region::parse("eu-west-1").unwrap(),
        )
    }

    #[test]
    fn a_valid_file() {
        let s = parse(&file("")).unwrap();
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.prefixes[0].principal, "xks-a");
        assert_eq!(s.keys["ext-1"].usage, XksKeyUsage::Encrypt);
        assert!(!format!("{s:?}").contains(SECRET), "secrets are redacted");
    }

    #[test]
    fn spec_lengths_and_alphabets() {
        assert!(check_access_key_id("ABCDEFGHIJKLMNOPQRST").is_ok());
        assert!(check_access_key_id("ABCDEFGHIJKLMNOPQRS").is_err(), "19");
        assert!(check_access_key_id(&"A".repeat(31)).is_err(), "31");
        assert!(
            check_access_key_id("ABCDEFGHIJKLMNOPQRS1").is_err(),
            "1 is not base32"
        );
        assert!(check_access_key_id("abcdefghijklmnopqrst").is_err());
        let s = |v: &str| check_secret(&SecretString::from(v.to_string()));
        assert!(s(SECRET).is_ok());
        assert!(s(&"a".repeat(42)).is_err());
        assert!(s(&"a".repeat(65)).is_err());
        assert!(s(&format!("{}-", "a".repeat(43))).is_err());
        assert!(check_uri_path("/kms/xks/v1").is_ok());
        assert!(check_uri_path("/a b/kms/xks/v1").is_err());
        assert!(check_uri_path("/tenant/kms/xks/v2").is_err());
        assert!(check_uri_path(&format!("/{}/kms/xks/v1", "a".repeat(120))).is_err());
        assert!(check_external_key_id("ext_1.a-B").is_ok());
        assert!(check_external_key_id("ext/1").is_err());
        assert!(check_external_key_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn duplicates_and_too_many_credentials_are_refused() {
        let twice = file(&format!(
            "[[prefixes]]\nuri_path = \"/b/kms/xks/v1\"\nprincipal = \"xks-b\"\ncredentials = [{{ access_key_id = \"{ID}\", secret_access_key = \"{SECRET}\" }}]\n"
        ));
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("configured twice")
        );
        let three = format!(
            "[[prefixes]]\nuri_path = \"/kms/xks/v1\"\nprincipal = \"p\"\ncredentials = [{c},{c},{c}]\n",
            c = format!("{{ access_key_id = \"{ID}\", secret_access_key = \"{SECRET}\" }}")
        );
        assert!(parse(&three).is_err());
        assert!(parse("").is_err(), "no prefix");
    }
}
