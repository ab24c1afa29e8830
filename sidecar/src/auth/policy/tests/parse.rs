//! Parsing tests: accepted and refused documents, their errors, and random documents that must
//! never panic the parser or the evaluator.

use super::*;
use crate::auth::policy::eval::{compile_glob, glob_match};
use proptest::prelude::*;

#[test]
fn valid_documents_parse() {
    let d = default_policy(ACCOUNT, ALICE, &[BOB.to_string(), ALICE.to_string()]);
    let p = Policy::parse(&d).unwrap();
    assert_eq!(p.statement_count(), 1);
    for who in [ALICE, BOB] {
        for a in Action::ALL {
            assert!(req(who, *a).eval(&p).is_allowed());
        }
    }
    assert_eq!(req(OTHER, Action::Decrypt).eval(&p), IMPLICIT);
    let v: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(
        v["Statement"][0]["Principal"]["AWS"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // 2008-10-17 and no Version are accepted when no variables are used.
    Policy::parse(r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#).unwrap();
    Policy::parse(
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
    )
    .unwrap();
    let big = format!(
        r#"{{"Version":"2012-10-17","Id":"{}","Statement":{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}}}"#,
        "x".repeat(MAX_POLICY_BYTES - 150)
    );
    assert!(big.len() <= MAX_POLICY_BYTES);
    Policy::parse(&big).unwrap();
    let p: Policy = TENANT_POLICY.parse().unwrap();
    assert_eq!(p.statement_count(), 3);
}

#[test]
fn unsupported_and_malformed_documents_are_rejected_by_name() {
    let base = r#""Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*""#;
    let cases: &[(String, &str)] = &[
            (
                format!(r#"[{{{base}}},{{"Effect":"Allow","Principal":"*","NotAction":"kms:Encrypt","Resource":"*"}}]"#),
                r#"unsupported policy element "NotAction" in statement 2"#,
            ),
            (
                format!(r#"{{"Effect":"Deny","NotPrincipal":{{"AWS":"{ALICE}"}},"Action":"kms:*","Resource":"*"}}"#),
                r#"unsupported policy element "NotPrincipal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*","NotResource":"*"}"#.into(),
                r#"unsupported policy element "NotResource" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Sid":"x","Foo":1}}"#),
                r#"unsupported policy element "Foo" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"NumericEquals":{{"kms:CallerAccount":"1"}}}}}}"#),
                r#"unsupported condition operator "NumericEquals" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"aws:SourceIp":"1.2.3.4"}}}}}}"#),
                r#"unsupported condition key "aws:SourceIp" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"unsupported principal type "Service" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"*","Service":"s3.amazonaws.com"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"unsupported principal type "Service" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":"${{aws:username}}"}}}}}}"#),
                r#"unsupported policy variable "${aws:username}" in statement 1"#,
            ),
            (
                r#"{"Effect":"allow","Principal":"*","Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Effect" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":7,"Resource":"*"}"#.into(),
                r#"invalid "Action" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":[],"Resource":"*"}"#.into(),
                r#"invalid "Action" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrpyt","Resource":"*"}"#.into(),
                r#""kms:Encrpyt" names no KMS action"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}"#.into(),
                "only kms: actions are supported",
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*"}"#.into(),
                r#"missing policy element "Resource" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"me","Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Principal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/*"},"Action":"kms:*","Resource":"*"}"#.into(),
                "wildcards are not allowed",
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Principal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"key/1"}"#.into(),
                r#"invalid "Resource" in statement 1"#,
            ),
            (
                r#"{"Effect":"Deny","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}"#.into(),
                r#"duplicate policy element "Effect" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":5}}}}}}"#),
                r#"invalid "kms:EncryptionContext:t" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContextKeys":"t"}}}}}}"#),
                "multi-valued key needs ForAllValues:StringEquals",
            ),
            (
                format!(r#"{{{base},"Condition":{{"ForAnyValue:StringEquals":{{"kms:CallerAccount":"1"}}}}}}"#),
                "apply only to kms:EncryptionContextKeys",
            ),
            (
                format!(r#"{{{base},"Condition":{{"ForAllValues:Null":{{"kms:EncryptionContextKeys":"true"}}}}}}"#),
                r#"unsupported condition operator "ForAllValues:Null""#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"Null":{{"kms:EncryptionContextKeys":"maybe"}}}}}}"#),
                "Null expects",
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":"${{aws:PrincipalTag/t"}}}}}}"#),
                "unterminated policy variable",
            ),
            ("[]".into(), r#"invalid "Statement" at the top level"#),
            ("\"x\"".into(), r#"invalid "Statement" at the top level"#),
            ("[1]".into(), r#"invalid "Statement" in statement 1"#),
        ];
    for (statements, want) in cases {
        let got = err(statements);
        assert!(
            got.contains(want),
            "{statements}\n  got: {got}\n  want: {want}"
        );
    }
    let top = |doc: &str| Policy::parse(doc).unwrap_err().to_string();
    assert!(
        top(r#"{"Version":"2012-10-17"}"#)
            .contains(r#"missing policy element "Statement" at the top level"#)
    );
    assert!(top(r#"{"Version":"2019-01-01","Statement":[]}"#).contains(r#"invalid "Version""#));
    assert!(
        top(r#"{"Statement":{},"Extra":{}}"#)
            .contains(r#"unsupported policy element "Extra" at the top level"#)
    );
    assert!(top("[]").contains(r#"invalid "policy document""#));
    assert!(top("{").contains("not valid JSON"));
    assert!(top(&" ".repeat(MAX_POLICY_BYTES + 1)).contains("the limit is 32768 bytes"));
    assert!(
            top(r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:t":"${aws:PrincipalTag/t}"}}}}"#)
            .contains("2012-10-17")
        );
    let long = format!(r#"{{"{}":1,"Statement":{{}}}}"#, "N".repeat(5000));
    assert!(top(&long).len() < 200, "element names are clipped");
}

#[test]
fn errors_become_malformed_policy_document() {
    let e: KmsError = Policy::parse(r#"{"Statement":{"NotAction":"kms:*"}}"#)
        .unwrap_err()
        .into();
    assert_eq!(e.kind(), ErrorKind::MalformedPolicyDocument);
    assert_eq!(
        e.wire_message(),
        r#"unsupported policy element "NotAction" in statement 1"#
    );
    assert!(std::error::Error::source(&e).is_some());
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let words = prop_oneof![
        Just("Version"),
        Just("Statement"),
        Just("Effect"),
        Just("Allow"),
        Just("Deny"),
        Just("Principal"),
        Just("AWS"),
        Just("*"),
        Just("Action"),
        Just("kms:*"),
        Just("kms:Encrypt"),
        Just("Resource"),
        Just("Condition"),
        Just("StringEquals"),
        Just("StringLike"),
        Just("ForAllValues:StringEquals"),
        Just("Null"),
        Just("kms:EncryptionContext:tenant"),
        Just("kms:EncryptionContextKeys"),
        Just("${aws:PrincipalTag/tenant}"),
        Just("2012-10-17"),
        Just("111122223333"),
        Just("arn:aws:iam::111122223333:user/alice"),
        Just("a*?${*}${"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        words.clone().prop_map(serde_json::Value::String),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec((words.clone(), inner), 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn eval_all(p: &Policy) {
    let ctx: EncryptionContext = [("tenant".to_string(), "A".to_string())].into();
    let tags: BTreeMap<String, String> = [("tenant".to_string(), "A".to_string())].into();
    for a in Action::ALL {
        for c in [None, Some(&ctx)] {
            let _ = p.evaluate(&RequestContext {
                principal_arn: ALICE,
                caller_account: ACCOUNT,
                action: *a,
                key_arn: KEY,
                encryption_context: c,
                principal_tags: &tags,
                xks: None,
            });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_json_never_panics(doc in arb_json()) {
        if let Ok(p) = Policy::parse(&doc.to_string()) {
            eval_all(&p);
        }
        let wrapped = serde_json::json!({"Version": "2012-10-17", "Statement": doc});
        if let Ok(p) = Policy::parse(&wrapped.to_string()) {
            eval_all(&p);
        }
    }

    #[test]
    fn mutated_policies_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
    ) {
        let mut bytes = TENANT_POLICY.as_bytes().to_vec();
        for (at, kind, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(p) = Policy::parse(&text) {
            eval_all(&p);
        }
    }

    #[test]
    fn glob_never_panics(p in ".{0,10}", t in ".{0,20}") {
        let mut toks = Vec::new();
        compile_glob(&p, &mut toks);
        let _ = glob_match(&toks, &t, true);
        let _ = glob_match(&toks, &t, false);
    }
}

// Fuzzing beyond random documents (issue 11; `docs/hardening.md`): nesting as deep as the size limit
// allows, duplicate members at every level, and sizes around the limit.

/// Writes `v` as JSON text, repeating the member `dup` of the object at `path` (with `with` as the
/// second value), so the duplicate can be put anywhere in the document.
fn write_with_duplicate(
    v: &serde_json::Value,
    path: &[usize],
    dup: usize,
    with: &serde_json::Value,
    out: &mut String,
) {
    match v {
        serde_json::Value::Object(m) => {
            out.push('{');
            for (i, (k, child)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                let deeper = match path.split_first() {
                    Some((&p, rest)) if p % m.len() == i => Some(rest),
                    _ => None,
                };
                match deeper {
                    Some(rest) => write_with_duplicate(child, rest, dup, with, out),
                    None => out.push_str(&child.to_string()),
                }
                if path.is_empty() && dup % m.len() == i {
                    out.push(',');
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    out.push_str(&with.to_string());
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match path.split_first() {
                    Some((&p, rest)) if p % a.len() == i => {
                        write_with_duplicate(child, rest, dup, with, out)
                    }
                    _ => out.push_str(&child.to_string()),
                }
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether `path` (indexes taken modulo each level's size) ends at an object.
fn ends_at_object(v: &serde_json::Value, path: &[usize]) -> bool {
    match (v, path.split_first()) {
        (serde_json::Value::Object(_), None) => true,
        (serde_json::Value::Object(m), Some((&p, rest))) if !m.is_empty() => {
            ends_at_object(m.values().nth(p % m.len()).unwrap(), rest)
        }
        (serde_json::Value::Array(a), Some((&p, rest))) if !a.is_empty() => {
            ends_at_object(&a[p % a.len()], rest)
        }
        _ => false,
    }
}

#[test]
fn nesting_up_to_the_size_limit_is_refused_without_overflow() {
    let half = MAX_POLICY_BYTES / 2;
    for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
        let depth = half / open.len();
        let doc = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        assert!(Policy::parse(&doc).is_err());
        let in_statement = format!(
            r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Principal":"*","Action":{}"kms:*"{},"Resource":"*"}}}}"#,
            open.repeat(depth / 2),
            close.repeat(depth / 2)
        );
        assert!(Policy::parse(&in_statement).is_err());
    }
}

proptest! {
    #![proptest_config(crate::fuzz_support::config(1000))]

    #[test]
    fn duplicate_members_are_refused_at_any_depth(
        path in prop::collection::vec(any::<usize>(), 0..6),
        dup in any::<usize>(),
        same in any::<bool>(),
    ) {
        let v: serde_json::Value = serde_json::from_str(TENANT_POLICY).unwrap();
        // The longest prefix of the generated path that ends at an object (the root always does).
        let depth = (0..=path.len()).rev().find(|&n| ends_at_object(&v, &path[..n])).unwrap();
        let path = &path[..depth];
        let with = if same { serde_json::Value::Null } else { serde_json::json!("Deny") };
        let mut text = String::new();
        write_with_duplicate(&v, path, dup, &with, &mut text);
        let err = Policy::parse(&text);
        prop_assert!(err.is_err(), "accepted a duplicate member: {text}");
    }

    #[test]
    fn random_nesting_never_panics(depth in 0usize..20_000, at in any::<prop::sample::Index>()) {
        let text = TENANT_POLICY;
        let i = at.index(text.len());
        prop_assume!(text.is_char_boundary(i));
        let doc = format!("{}[{}{}", &text[..i], "[".repeat(depth), &text[i..]);
        if let Ok(p) = Policy::parse(&doc) {
            eval_all(&p);
        }
    }

    #[test]
    fn size_limit_is_exact(extra in 0usize..64) {
        let base = r#"{"Version":"2012-10-17","Id":"","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#;
        let fill = MAX_POLICY_BYTES - base.len() + extra;
        let doc = base.replace(r#""Id":"""#, &format!(r#""Id":"{}""#, "x".repeat(fill)));
        let parsed = Policy::parse(&doc);
        if doc.len() > MAX_POLICY_BYTES {
            let too_large = matches!(parsed, Err(PolicyError::TooLarge { .. }));
            prop_assert!(too_large, "{} bytes accepted", doc.len());
        } else {
            prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        }
    }
}
