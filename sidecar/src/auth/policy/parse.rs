//! Reading a policy document into the compiled [`Policy`], refusing every element, operator,
//! condition key, principal type or variable outside the supported subset.
//!
//! It exists so that validation happens once, when a policy is stored: evaluation can then assume a
//! well-formed structure, and a rejected document names the element that was not understood.

use std::sync::Arc;

use super::eval::{Tok, compile_glob, glob_match};
use super::json::{J, members, strings};
use super::{
    Action, At, CondKey, CondValue, Condition, MAX_POLICY_BYTES, Part, Policy, PolicyError,
    PrincipalMatch, SetQualifier, Statement, Test, Var, clip, invalid,
};

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { size: text.len() });
        }
        let doc: J = serde_json::from_str(text).map_err(PolicyError::Json)?;
        let at = At::Document;
        let mut version = None;
        let mut statement = None;
        for (name, value) in members(&doc, "policy document", at)? {
            match name.as_str() {
                "Version" => match value {
                    J::Str(v) if v == "2012-10-17" || v == "2008-10-17" => version = Some(v),
                    _ => {
                        return Err(invalid(
                            "Version",
                            at,
                            "expected \"2012-10-17\" or \"2008-10-17\"",
                        ));
                    }
                },
                "Id" => {
                    if !matches!(value, J::Str(_)) {
                        return Err(invalid("Id", at, "expected a string"));
                    }
                }
                "Statement" => statement = Some(value),
                other => {
                    return Err(PolicyError::UnsupportedElement {
                        element: clip(other),
                        at,
                    });
                }
            }
        }
        // Without a Version, AWS uses 2008-10-17, where `${...}` is plain text.
        let variables = version.is_some_and(|v| v == "2012-10-17");
        let statement = statement.ok_or(PolicyError::Missing {
            element: "Statement",
            at,
        })?;
        let raw: Vec<&J> = match statement {
            J::Obj(_) => vec![statement],
            J::Arr(items) if !items.is_empty() => items.iter().collect(),
            _ => {
                return Err(invalid(
                    "Statement",
                    at,
                    "expected an object or a non-empty array of objects",
                ));
            }
        };
        let statements = raw
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse_statement(s, At::Statement(i + 1), variables))
            .collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }
}

fn parse_statement(j: &J, at: At, variables: bool) -> Result<Statement, PolicyError> {
    let mut sid = None;
    let mut effect = None;
    let mut principals = None;
    let mut actions = None;
    let mut resources = None;
    let mut conditions = Vec::new();
    for (name, value) in members(j, "Statement", at)? {
        match name.as_str() {
            "Sid" => match value {
                J::Str(s) => sid = Some(Arc::from(s.as_str())),
                _ => return Err(invalid("Sid", at, "expected a string")),
            },
            "Effect" => match value {
                J::Str(s) if s == "Allow" => effect = Some(true),
                J::Str(s) if s == "Deny" => effect = Some(false),
                _ => return Err(invalid("Effect", at, "expected \"Allow\" or \"Deny\"")),
            },
            "Principal" => principals = Some(parse_principal(value, at)?),
            "Action" => actions = Some(parse_actions(value, at)?),
            "Resource" => resources = Some(parse_resources(value, at)?),
            "Condition" => conditions = parse_conditions(value, at, variables)?,
            other => {
                return Err(PolicyError::UnsupportedElement {
                    element: clip(other),
                    at,
                });
            }
        }
    }
    let missing = |element| PolicyError::Missing { element, at };
    Ok(Statement {
        sid,
        allow: effect.ok_or(missing("Effect"))?,
        principals: principals.ok_or(missing("Principal"))?,
        actions: actions.ok_or(missing("Action"))?,
        resources: resources.ok_or(missing("Resource"))?,
        has_context_condition: conditions.iter().any(|c| c.key.is_context()),
        conditions,
    })
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_principal(j: &J, at: At) -> Result<Option<Vec<PrincipalMatch>>, PolicyError> {
    if let J::Str(s) = j {
        return if s == "*" {
            Ok(None)
        } else {
            Err(invalid(
                "Principal",
                at,
                "expected \"*\" or an object such as {\"AWS\": [...]}",
            ))
        };
    }
    let mut list = None;
    let mut anyone = false;
    for (kind, value) in members(j, "Principal", at)? {
        if kind != "AWS" {
            return Err(PolicyError::UnsupportedPrincipal {
                kind: clip(kind),
                at,
            });
        }
        let mut out = Vec::new();
        for p in strings(value, "Principal", at)? {
            if p == "*" {
                anyone = true;
            } else {
                out.push(parse_principal_id(p, at)?);
            }
        }
        list = Some(out);
    }
    match list {
        None => Err(invalid("Principal", at, "expected an \"AWS\" member")),
        Some(_) if anyone => Ok(None),
        Some(list) => Ok(Some(list)),
    }
}

fn parse_principal_id(p: &str, at: At) -> Result<PrincipalMatch, PolicyError> {
    if is_account_id(p) {
        return Ok(PrincipalMatch::Account(p.to_owned()));
    }
    let fields: Vec<&str> = p.splitn(6, ':').collect();
    let bad = |why: &str| invalid("Principal", at, format!("\"{}\": {why}", clip(p)));
    match fields.as_slice() {
        ["arn", partition, service, _region, account, resource]
            if !partition.is_empty()
                && (*service == "iam" || *service == "sts")
                && is_account_id(account)
                && !resource.is_empty() =>
        {
            if p.contains(['*', '?']) {
                return Err(bad(
                    "wildcards are not allowed in principal ARNs (use aws:PrincipalArn with StringLike)",
                ));
            }
            if *resource == "root" {
                Ok(PrincipalMatch::Account((*account).to_owned()))
            } else {
                Ok(PrincipalMatch::Arn(p.to_owned()))
            }
        }
        _ => Err(bad(
            "expected \"*\", a 12-digit account id or an IAM ARN (arn:aws:iam::<account>:...)",
        )),
    }
}

fn parse_actions(j: &J, at: At) -> Result<u64, PolicyError> {
    let mut bits = 0u64;
    let mut toks = Vec::new();
    for a in strings(j, "Action", at)? {
        let is_kms = a.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("kms:"));
        if a != "*" && !is_kms {
            return Err(invalid(
                "Action",
                at,
                format!("\"{}\": only kms: actions are supported", clip(a)),
            ));
        }
        toks.clear();
        compile_glob(a, &mut toks);
        let matched = Action::ALL
            .iter()
            .filter(|act| glob_match(&toks, act.name(), true))
            .fold(0u64, |acc, act| acc | act.bit());
        if matched == 0 {
            return Err(invalid(
                "Action",
                at,
                format!("\"{}\" names no KMS action", clip(a)),
            ));
        }
        bits |= matched;
    }
    Ok(bits)
}

fn parse_resources(j: &J, at: At) -> Result<Option<Vec<Vec<Tok>>>, PolicyError> {
    let mut out = Vec::new();
    let mut any = false;
    for r in strings(j, "Resource", at)? {
        if r == "*" {
            any = true;
            continue;
        }
        if !r.starts_with("arn:") {
            return Err(invalid(
                "Resource",
                at,
                format!("\"{}\": expected \"*\" or a key ARN", clip(r)),
            ));
        }
        let mut toks = Vec::new();
        compile_glob(r, &mut toks);
        out.push(toks);
    }
    Ok(if any { None } else { Some(out) })
}

fn parse_operator(op: &str, at: At) -> Result<(Test, SetQualifier, bool, bool), PolicyError> {
    let unsupported = || PolicyError::UnsupportedOperator {
        operator: clip(op),
        at,
    };
    let (set, rest) = if let Some(r) = op.strip_prefix("ForAllValues:") {
        (SetQualifier::ForAllValues, r)
    } else if let Some(r) = op.strip_prefix("ForAnyValue:") {
        (SetQualifier::ForAnyValue, r)
    } else {
        (SetQualifier::Single, op)
    };
    let (base, if_exists) = match rest.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (rest, false),
    };
    let (test, negate) = match base {
        "StringEquals" => (Test::Equals { ignore_case: false }, false),
        "StringNotEquals" => (Test::Equals { ignore_case: false }, true),
        "StringEqualsIgnoreCase" => (Test::Equals { ignore_case: true }, false),
        "StringNotEqualsIgnoreCase" => (Test::Equals { ignore_case: true }, true),
        "StringLike" => (Test::Like, false),
        "StringNotLike" => (Test::Like, true),
        "Null" if set == SetQualifier::Single && !if_exists => (Test::Null { absent: true }, false),
        _ => return Err(unsupported()),
    };
    Ok((test, set, negate, if_exists))
}

fn parse_condition_key(key: &str, at: At) -> Result<CondKey, PolicyError> {
    // Condition key names are case-insensitive in AWS; what follows `:` or `/` keeps its text.
    let prefixed = |prefix: &str| {
        key.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .and_then(|_| key.get(prefix.len()..))
            .filter(|rest| !rest.is_empty())
    };
    if key.eq_ignore_ascii_case("kms:EncryptionContextKeys") {
        Ok(CondKey::ContextKeys)
    } else if key.eq_ignore_ascii_case("kms:CallerAccount") {
        Ok(CondKey::CallerAccount)
    } else if key.eq_ignore_ascii_case("aws:PrincipalArn") {
        Ok(CondKey::PrincipalArn)
    } else if let Some(k) = prefixed("kms:EncryptionContext:") {
        Ok(CondKey::ContextValue(k.to_owned()))
    } else if let Some(t) = prefixed("aws:PrincipalTag/") {
        Ok(CondKey::PrincipalTag(t.to_owned()))
    } else if let Some((_, field)) = super::XksField::NAMES
        .iter()
        .find(|(name, _)| key.eq_ignore_ascii_case(name))
    {
        Ok(CondKey::Xks(*field))
    } else {
        Err(PolicyError::UnsupportedConditionKey { key: clip(key), at })
    }
}

fn parse_conditions(j: &J, at: At, variables: bool) -> Result<Vec<Condition>, PolicyError> {
    let mut out = Vec::new();
    for (op, block) in members(j, "Condition", at)? {
        let (test, set, negate, if_exists) = parse_operator(op, at)?;
        for (key_name, value) in members(block, op, at)? {
            let key = parse_condition_key(key_name, at)?;
            let multi = matches!(key, CondKey::ContextKeys);
            if let Test::Null { .. } = test {
                let absent = match value {
                    J::Bool(b) => *b,
                    J::Str(s) if s == "true" => true,
                    J::Str(s) if s == "false" => false,
                    _ => return Err(invalid(key_name, at, "Null expects \"true\" or \"false\"")),
                };
                out.push(Condition {
                    key,
                    test: Test::Null { absent },
                    set,
                    negate,
                    if_exists,
                    values: Vec::new(),
                });
                continue;
            }
            if multi && set == SetQualifier::Single {
                return Err(invalid(
                    key_name,
                    at,
                    format!("a multi-valued key needs ForAllValues:{op} or ForAnyValue:{op}"),
                ));
            }
            if !multi && set != SetQualifier::Single {
                return Err(invalid(
                    key_name,
                    at,
                    "ForAllValues/ForAnyValue apply only to kms:EncryptionContextKeys",
                ));
            }
            let values = strings(value, key_name, at)?
                .into_iter()
                .map(|v| parse_value(v, key_name, at, variables))
                .collect::<Result<_, _>>()?;
            out.push(Condition {
                key,
                test,
                set,
                negate,
                if_exists,
                values,
            });
        }
    }
    Ok(out)
}

fn parse_value(v: &str, key: &str, at: At, variables: bool) -> Result<CondValue, PolicyError> {
    if !v.contains("${") {
        let mut toks = Vec::new();
        compile_glob(v, &mut toks);
        return Ok(CondValue::Fixed {
            text: v.to_owned(),
            toks,
        });
    }
    if !variables {
        return Err(invalid(
            key,
            at,
            "policy variables (${...}) need \"Version\": \"2012-10-17\"",
        ));
    }
    let mut parts = Vec::new();
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(invalid(key, at, "unterminated policy variable \"${\""));
        };
        let name = &after[..end];
        let prefix = "aws:PrincipalTag/";
        parts.push(match name {
            "*" => Part::Escaped('*'),
            "?" => Part::Escaped('?'),
            "$" => Part::Escaped('$'),
            n if n.eq_ignore_ascii_case("aws:PrincipalArn") => Part::Var(Var::PrincipalArn),
            n if n.eq_ignore_ascii_case("kms:CallerAccount") => Part::Var(Var::CallerAccount),
            n if n.len() > prefix.len()
                && n.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix)) =>
            {
                Part::Var(Var::PrincipalTag(n[prefix.len()..].to_owned()))
            }
            n => {
                return Err(PolicyError::UnsupportedVariable {
                    variable: clip(n),
                    at,
                });
            }
        });
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    // Only escapes: no request data involved, so it is a fixed value after all.
    if parts.iter().all(|p| !matches!(p, Part::Var(_))) {
        let mut text = String::new();
        let mut toks = Vec::new();
        for p in &parts {
            match p {
                Part::Text(t) => {
                    text.push_str(t);
                    compile_glob(t, &mut toks);
                }
                Part::Escaped(c) => {
                    text.push(*c);
                    toks.push(Tok::Ch(*c));
                }
                Part::Var(_) => {}
            }
        }
        return Ok(CondValue::Fixed { text, toks });
    }
    Ok(CondValue::Dynamic(parts))
}
