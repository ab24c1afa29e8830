//! Evaluation of a compiled [`Policy`]: glob matching, policy variables, conditions, and the
//! Deny > Allow > implicit-deny decision.
//!
//! It is separate from parsing because it runs on every call (cache hits included) and must not
//! allocate or fail: everything that can be rejected was rejected when the document was parsed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{
    CondKey, CondValue, Condition, Decision, DenyReason, Part, Policy, PrincipalMatch,
    RequestContext, SetQualifier, Statement, Test, Var,
};

// ---------------------------------------------------------------------------------------------
// Patterns: `*` matches any run of characters, `?` exactly one.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Star,
    One,
    Ch(char),
}

pub(super) fn compile_glob(pattern: &str, out: &mut Vec<Tok>) {
    out.extend(pattern.chars().map(|c| match c {
        '*' => Tok::Star,
        '?' => Tok::One,
        c => Tok::Ch(c),
    }));
}

fn chars_eq(a: char, b: char, ignore_case: bool) -> bool {
    a == b || (ignore_case && a.to_lowercase().eq(b.to_lowercase()))
}

fn str_eq(a: &str, b: &str, ignore_case: bool) -> bool {
    a == b
        || (ignore_case
            && a.chars()
                .flat_map(char::to_lowercase)
                .eq(b.chars().flat_map(char::to_lowercase)))
}

/// Glob match without allocation or recursion: O(pattern × text) in the worst case.
pub(super) fn glob_match(toks: &[Tok], text: &str, ignore_case: bool) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where the last `*` was and the text position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        let c = text.get(t..).and_then(|s| s.chars().next());
        match (toks.get(p), c) {
            (Some(Tok::Star), _) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            (Some(Tok::One), Some(c)) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (Some(Tok::Ch(pc)), Some(c)) if chars_eq(*pc, c, ignore_case) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        let Some((sp, st)) = star else { return false };
        let Some(c) = text.get(st..).and_then(|s| s.chars().next()) else {
            return false;
        };
        let next = st + c.len_utf8();
        star = Some((sp, next));
        p = sp + 1;
        t = next;
    }
}

fn tag<'a>(tags: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn context_value<'a>(ctx: &RequestContext<'a>, key: &str) -> Option<&'a str> {
    ctx.encryption_context?
        .iter()
        .find(|(k, _)| str_eq(k, key, true))
        .map(|(_, v)| v.as_str())
}

impl Var {
    fn resolve<'a>(&self, ctx: &RequestContext<'a>) -> Option<&'a str> {
        match self {
            Var::PrincipalTag(t) => tag(ctx.principal_tags, t),
            Var::PrincipalArn => Some(ctx.principal_arn),
            Var::CallerAccount => Some(ctx.caller_account),
        }
    }
}

impl CondValue {
    /// Whether the request value `v` matches. A variable the request cannot resolve (a missing
    /// principal tag) makes the value match nothing: an Allow on it does not apply, and a negated
    /// operator (`StringNotEquals`) in a Deny does.
    fn matches(&self, test: Test, v: &str, ctx: &RequestContext<'_>) -> bool {
        match (self, test) {
            (CondValue::Fixed { text, .. }, Test::Equals { ignore_case }) => {
                str_eq(text, v, ignore_case)
            }
            (CondValue::Fixed { toks, .. }, Test::Like) => glob_match(toks, v, false),
            (CondValue::Dynamic(parts), Test::Equals { ignore_case }) => {
                let text = match parts.as_slice() {
                    [Part::Var(var)] => match var.resolve(ctx) {
                        Some(s) => Cow::Borrowed(s),
                        None => return false,
                    },
                    parts => {
                        let mut s = String::new();
                        for part in parts {
                            match part {
                                Part::Text(t) => s.push_str(t),
                                Part::Escaped(c) => s.push(*c),
                                Part::Var(var) => match var.resolve(ctx) {
                                    Some(r) => s.push_str(r),
                                    None => return false,
                                },
                            }
                        }
                        Cow::Owned(s)
                    }
                };
                str_eq(&text, v, ignore_case)
            }
            (CondValue::Dynamic(parts), Test::Like) => {
                let mut toks = Vec::new();
                for part in parts {
                    match part {
                        Part::Text(t) => compile_glob(t, &mut toks),
                        Part::Escaped(c) => toks.push(Tok::Ch(*c)),
                        // A resolved value is data, never a wildcard: a tag `*` matches only `*`.
                        Part::Var(var) => match var.resolve(ctx) {
                            Some(r) => toks.extend(r.chars().map(Tok::Ch)),
                            None => return false,
                        },
                    }
                }
                glob_match(&toks, v, false)
            }
            (_, Test::Null { .. }) => false,
        }
    }
}

impl Condition {
    fn single_value<'a>(&self, ctx: &RequestContext<'a>) -> Option<&'a str> {
        match &self.key {
            CondKey::ContextValue(k) => context_value(ctx, k),
            CondKey::ContextKeys => None,
            CondKey::CallerAccount => Some(ctx.caller_account),
            CondKey::PrincipalArn => Some(ctx.principal_arn),
            CondKey::PrincipalTag(t) => tag(ctx.principal_tags, t),
            CondKey::Xks(field) => ctx.xks.as_ref().and_then(|m| field.get(m)),
        }
    }

    fn value_passes(&self, v: &str, ctx: &RequestContext<'_>) -> bool {
        let any = self.values.iter().any(|pv| pv.matches(self.test, v, ctx));
        any != self.negate
    }

    fn holds(&self, ctx: &RequestContext<'_>) -> bool {
        let context_keys = || {
            ctx.encryption_context
                .into_iter()
                .flat_map(|c| c.keys().map(String::as_str))
        };
        if let Test::Null { absent } = self.test {
            let is_absent = match self.key {
                CondKey::ContextKeys => context_keys().next().is_none(),
                _ => self.single_value(ctx).is_none(),
            };
            return is_absent == absent;
        }
        match self.set {
            SetQualifier::Single => match self.single_value(ctx) {
                // AWS: a missing key fails a positive operator and passes a negated one.
                None => self.negate || self.if_exists,
                Some(v) => self.value_passes(v, ctx),
            },
            // AWS: ForAllValues is true when the request has no values at all.
            SetQualifier::ForAllValues => context_keys().all(|v| self.value_passes(v, ctx)),
            SetQualifier::ForAnyValue => {
                let mut keys = context_keys().peekable();
                if keys.peek().is_none() {
                    return self.if_exists;
                }
                keys.any(|v| self.value_passes(v, ctx))
            }
        }
    }
}

impl Statement {
    fn principal_matches(&self, ctx: &RequestContext<'_>) -> bool {
        match &self.principals {
            None => true,
            Some(list) => list.iter().any(|p| match p {
                PrincipalMatch::Account(a) => a == ctx.caller_account,
                PrincipalMatch::Arn(arn) => arn == ctx.principal_arn,
            }),
        }
    }

    fn resource_matches(&self, key_arn: &str) -> bool {
        match &self.resources {
            None => true,
            Some(list) => list.iter().any(|r| glob_match(r, key_arn, false)),
        }
    }
}

impl Policy {
    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Decides one request. Never panics and allocates only for a condition value that mixes a
    /// policy variable with other text.
    pub fn evaluate(&self, ctx: &RequestContext<'_>) -> Decision {
        let bit = ctx.action.bit();
        let mut allowed = false;
        let mut context_mismatch = false;
        for s in &self.statements {
            if s.actions & bit == 0 || !s.principal_matches(ctx) || !s.resource_matches(ctx.key_arn)
            {
                continue;
            }
            if !s.allow {
                if s.conditions.iter().all(|c| c.holds(ctx)) {
                    let reason = if s.has_context_condition {
                        DenyReason::ContextMismatch
                    } else {
                        DenyReason::PolicyDenied
                    };
                    return Decision::ExplicitDeny {
                        sid: s.sid.clone(),
                        reason,
                    };
                }
                continue;
            }
            if allowed {
                // Only a Deny can change the answer now.
                continue;
            }
            let mut context_failed = false;
            let mut other_failed = false;
            for c in &s.conditions {
                if !c.holds(ctx) {
                    if c.key.is_context() {
                        context_failed = true;
                    } else {
                        other_failed = true;
                        break;
                    }
                }
            }
            if !context_failed && !other_failed {
                allowed = true;
            } else if !other_failed {
                context_mismatch = true;
            }
        }
        if allowed {
            Decision::Allow
        } else {
            let reason = if context_mismatch {
                DenyReason::ContextMismatch
            } else {
                DenyReason::PolicyDenied
            };
            Decision::ImplicitDeny { reason }
        }
    }
}
