//! Local authorization in proxy mode: which principal may use which upstream keys, for which
//! operations and encryption contexts.
//!
//! In proxy mode the keys live upstream and the sidecar calls the upstream with its own identity, so
//! the upstream's key policies see one caller (the sidecar) for every application. These rules say
//! who of the sidecar's own clients may do what, and they run before the decrypt cache and before
//! the upstream, on every call (cache hits included). They are deliberately simpler than key
//! policies: a list of allow rules, default deny, no Deny statements and no conditions beyond an
//! exact encryption-context match, so that a reader can tell what a file allows at a glance.
//!
//! ```json
//! { "rules": [
//!   { "principals": ["billing"],
//!     "actions": ["Encrypt", "Decrypt", "GenerateDataKey*"],
//!     "keys": ["alias/billing-*", "arn:aws:kms:us-east-1:111122223333:key/1234abcd-*"],
//!     "context": { "app": "billing" } } ] }
//! ```
//!
//! Patterns use `*` for any run of characters. `actions` are KMS operation names (an optional
//! `kms:` prefix is accepted). A key matches when a pattern matches the key id, key ARN or alias
//! the request names, the ARN the upstream answered with, or an alias the upstream maps to that ARN.
//! Operations on no key (CreateKey, ListKeys, ListAliases without KeyId, GenerateRandom) need a
//! rule that lists the action; its `keys` are not consulted. `context` lists pairs the request's
//! encryption context must contain (a value may be a pattern).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::kms::{EncryptionContext, Operation};

/// Longest pattern accepted; keeps matching cheap.
const MAX_PATTERN: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    principals: Vec<String>,
    actions: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

/// One allow rule, validated.
#[derive(Debug, Clone)]
struct Rule {
    principals: Vec<String>,
    actions: Vec<Operation>,
    keys: Vec<String>,
    context: BTreeMap<String, String>,
}

/// The proxy's local policy: allow rules, default deny.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    rules: Vec<Rule>,
}

/// What is known of the key a call touches, at the time it is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyNames<'a> {
    /// The KeyId the request named (key id, key ARN, alias name or alias ARN).
    pub named: Option<&'a str>,
    /// The key ARN the upstream answered with (or the decrypt cache remembered).
    pub arn: Option<&'a str>,
    /// Aliases the upstream maps to `arn` (from the background alias poll).
    pub aliases: &'a [String],
}

impl KeyNames<'_> {
    fn any(&self, pattern: &str) -> bool {
        let key_id = self
            .arn
            .and_then(|a| a.rsplit_once("key/").map(|(_, id)| id));
        self.named
            .into_iter()
            .chain(self.arn)
            .chain(key_id)
            .any(|n| glob(pattern, n))
            || self.aliases.iter().any(|a| glob(pattern, a))
    }

    fn known(&self) -> bool {
        self.named.is_some() || self.arn.is_some()
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn actions(raw: &[String]) -> anyhow::Result<Vec<Operation>> {
    let mut out = Vec::new();
    for a in raw {
        let name = a.strip_prefix("kms:").unwrap_or(a);
        let matched: Vec<Operation> = Operation::ALL
            .iter()
            .copied()
            .filter(|op| glob(name, op.as_str()))
            .collect();
        if matched.is_empty() {
            bail!("action {a:?} names no KMS operation");
        }
        out.extend(matched);
    }
    Ok(out)
}

impl ProxyPolicy {
    /// Parses and validates a policy document.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let raw: RawPolicy = serde_json::from_str(text).context("the proxy policy is not valid")?;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let too_long = r
                .principals
                .iter()
                .chain(&r.keys)
                .chain(r.context.values())
                .any(|p| p.len() > MAX_PATTERN);
            if r.principals.is_empty() || r.actions.is_empty() || too_long {
                bail!(
                    "proxy policy rule {i} needs principals and actions (patterns up to {MAX_PATTERN} characters)"
                );
            }
            rules.push(Rule {
                principals: r.principals,
                actions: actions(&r.actions).with_context(|| format!("proxy policy rule {i}"))?,
                keys: r.keys,
                context: r.context,
            });
        }
        Ok(Self { rules })
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the proxy policy {}", path.display()))?;
        Self::from_json(&text).with_context(|| path.display().to_string())
    }

    /// Whether `principal` may run `op` on the key `key` with `context`. With no key known yet
    /// (a Decrypt before the upstream has said which key its ciphertext is under), any rule that
    /// would allow the call for some key allows it; the call is checked again once the key is known.
    pub fn allows(
        &self,
        principal: &str,
        op: Operation,
        key: KeyNames<'_>,
        context: Option<&EncryptionContext>,
    ) -> bool {
        let keyless = matches!(
            op,
            Operation::CreateKey | Operation::ListKeys | Operation::GenerateRandom
        ) || (op == Operation::ListAliases && !key.known());
        self.rules.iter().any(|r| {
            r.principals.iter().any(|p| glob(p, principal))
                && r.actions.contains(&op)
                && (keyless || !key.known() || r.keys.iter().any(|k| key.any(k)))
                && r.context.iter().all(|(k, v)| {
                    context
                        .and_then(|c| c.get(k))
                        .is_some_and(|have| glob(v, have))
                })
        })
    }

    /// Keys the rules name without a wildcard: the bounded set of metric labels per upstream key.
    pub fn literal_keys(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| &r.keys)
            .map(String::as_str)
            .filter(|k| !k.contains('*'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-0000";

    fn policy() -> ProxyPolicy {
        ProxyPolicy::from_json(
            r#"{"rules":[
              {"principals":["billing"],"actions":["kms:Decrypt","Encrypt","GenerateDataKey*"],
               "keys":["alias/billing-*"],"context":{"app":"billing"}},
              {"principals":["ops-*"],"actions":["DescribeKey","ListKeys"],"keys":["*"]}
            ]}"#,
        )
        .unwrap()
    }

    fn ctx(v: &str) -> EncryptionContext {
        EncryptionContext::from([("app".to_string(), v.to_string())])
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("alias/a-*", "alias/a-b/c"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcd"));
        assert!(!glob("alias/a", "alias/ab"));
    }

    #[test]
    fn rules_match_principal_action_key_and_context() {
        let p = policy();
        let aliases = vec!["alias/billing-main".to_string()];
        let by_alias = KeyNames {
            named: Some("alias/billing-main"),
            ..Default::default()
        };
        let by_arn = KeyNames {
            named: Some(ARN),
            arn: Some(ARN),
            aliases: &aliases,
        };
        let unknown = KeyNames {
            named: Some(ARN),
            arn: Some(ARN),
            aliases: &[],
        };
        let good = ctx("billing");
        assert!(p.allows("billing", Operation::Encrypt, by_alias, Some(&good)));
        assert!(p.allows("billing", Operation::Decrypt, by_arn, Some(&good)));
        assert!(p.allows(
            "billing",
            Operation::GenerateDataKeyWithoutPlaintext,
            by_arn,
            Some(&good)
        ));
        // A key no alias pattern reaches, another context, another principal, another action.
        assert!(!p.allows("billing", Operation::Decrypt, unknown, Some(&good)));
        assert!(!p.allows("billing", Operation::Decrypt, by_arn, Some(&ctx("x"))));
        assert!(!p.allows("billing", Operation::Decrypt, by_arn, None));
        assert!(!p.allows("other", Operation::Decrypt, by_arn, Some(&good)));
        assert!(!p.allows("billing", Operation::DisableKey, by_arn, Some(&good)));
        // Account-level calls need the action only.
        assert!(p.allows("ops-1", Operation::ListKeys, KeyNames::default(), None));
        assert!(!p.allows("billing", Operation::ListKeys, KeyNames::default(), None));
        assert_eq!(p.literal_keys().count(), 0);
    }

    #[test]
    fn bad_documents_are_refused() {
        for doc in [
            r#"{"rules":[{"principals":[],"actions":["Decrypt"]}]}"#,
            r#"{"rules":[{"principals":["a"],"actions":["Frobnicate"]}]}"#,
            r#"{"rules":[{"principals":["a"],"actions":["Decrypt"],"extra":1}]}"#,
            r#"{"rules":"#,
        ] {
            assert!(ProxyPolicy::from_json(doc).is_err(), "{doc}");
        }
    }
}
