//! Evaluation tests: glob matching, Allow/Deny, principals, resources, variables and operators.

use super::*;
use crate::auth::policy::eval::{compile_glob, glob_match};

#[test]
fn glob_matcher() {
    let m = |p: &str, t: &str| {
        let mut toks = Vec::new();
        compile_glob(p, &mut toks);
        glob_match(&toks, t, false)
    };
    assert!(m("", ""));
    assert!(!m("", "a"));
    assert!(m("*", ""));
    assert!(m("*", "anything"));
    assert!(m("a*c", "abbbc"));
    assert!(m("a*c", "ac"));
    assert!(!m("a*c", "acb"));
    assert!(m("a?c", "abc"));
    assert!(!m("a?c", "ac"));
    assert!(m("*a*b*", "xxaxxbxx"));
    assert!(!m("*a*b*", "xxbxxaxx"));
    assert!(m("t-?", "t-é"), "? is one character, not one byte");
    assert!(m("é*", "éte"));
    assert!(!m("abc", "ABC"));
    let mut toks = Vec::new();
    compile_glob("KMS:generatedatakey*", &mut toks);
    assert!(glob_match(&toks, "kms:GenerateDataKeyPair", true));
    // Pathological backtracking stays fast (quadratic, not exponential).
    let text = "a".repeat(2000);
    assert!(!m(&format!("{}b", "*a".repeat(50)), &text));
}

#[test]
fn allow_deny_and_implicit_deny() {
    let p = policy(
        r#"[
              {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},
               "Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"},
              {"Sid":"NoDecryptForBob","Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},
               "Action":"kms:Decrypt","Resource":"*"},
              {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},
               "Action":"kms:*","Resource":"*"}
            ]"#,
    );
    assert_eq!(req(ALICE, Action::Encrypt).eval(&p), Decision::Allow);
    assert_eq!(req(ALICE, Action::Decrypt).eval(&p), Decision::Allow);
    assert_eq!(req(ALICE, Action::GenerateDataKey).eval(&p), IMPLICIT);
    assert_eq!(req(OTHER, Action::Encrypt).eval(&p), IMPLICIT);
    // Explicit Deny beats an Allow that comes after it, and one that comes before.
    let deny = Decision::ExplicitDeny {
        sid: Some("NoDecryptForBob".into()),
        reason: DenyReason::PolicyDenied,
    };
    assert_eq!(req(BOB, Action::Decrypt).eval(&p), deny);
    assert_eq!(req(BOB, Action::Encrypt).eval(&p), Decision::Allow);
    let p2 = policy(
        r#"[
              {"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},
              {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}
            ]"#,
    );
    assert_eq!(
        req(ALICE, Action::Decrypt).eval(&p2),
        Decision::ExplicitDeny {
            sid: None,
            reason: DenyReason::PolicyDenied
        }
    );
    assert!(req(ALICE, Action::Encrypt).eval(&p2).is_allowed());
}

#[test]
fn wildcard_and_case_insensitive_actions() {
    let p = policy(
        r#"{"Effect":"Allow","Principal":"*","Action":["KMS:generatedatakey*","kms:Re?ncrypt*"],"Resource":"*"}"#,
    );
    for a in [
        Action::GenerateDataKey,
        Action::GenerateDataKeyWithoutPlaintext,
        Action::GenerateDataKeyPair,
        Action::ReEncryptFrom,
        Action::ReEncryptTo,
    ] {
        assert!(req(ALICE, a).eval(&p).is_allowed(), "{a}");
    }
    assert_eq!(req(ALICE, Action::Encrypt).eval(&p), IMPLICIT);
    let all = policy(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}"#);
    for a in Action::ALL {
        assert!(req(ALICE, *a).eval(&all).is_allowed());
    }
}

#[test]
fn principals_accounts_and_resources() {
    let p = policy(
        r#"[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:Encrypt","Resource":"*"},
                {"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::444455556666:root"]},"Action":"kms:Decrypt",
                 "Resource":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}]"#,
    );
    assert!(req(ALICE, Action::Encrypt).eval(&p).is_allowed());
    assert!(req(BOB, Action::Encrypt).eval(&p).is_allowed());
    assert_eq!(req(OTHER, Action::Encrypt).eval(&p), IMPLICIT);
    assert!(req(OTHER, Action::Decrypt).eval(&p).is_allowed());
    let mut other_key = req(OTHER, Action::Decrypt);
    other_key.key = "arn:aws:kms:us-east-1:111122223333:key/other";
    assert_eq!(other_key.eval(&p), IMPLICIT);
    let any = policy(
        r#"{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Encrypt","Resource":["arn:aws:kms:*:111122223333:key/*"]}"#,
    );
    assert!(req(OTHER, Action::Encrypt).eval(&any).is_allowed());
}

#[test]
fn tenant_isolation_with_policy_variables() {
    let p = Policy::parse(TENANT_POLICY).unwrap();
    let alice = || req(ALICE, Action::Encrypt).tag("tenant", "A");
    assert!(alice().ctx(&[("tenant", "A")]).eval(&p).is_allowed());
    // The context key in the condition key is case-insensitive, the value is not.
    assert!(alice().ctx(&[("Tenant", "A")]).eval(&p).is_allowed());
    assert_eq!(alice().ctx(&[("tenant", "a")]).eval(&p), MISMATCH);
    assert_eq!(alice().ctx(&[("tenant", "B")]).eval(&p), MISMATCH);
    assert_eq!(alice().eval(&p), MISMATCH, "no context at all");
    // A caller without the tag matches no tenant.
    assert_eq!(
        req(ALICE, Action::Encrypt).ctx(&[("tenant", "")]).eval(&p),
        MISMATCH
    );
    // An action the statement does not grant is a plain policy denial.
    assert_eq!(
        alice()
            .ctx(&[("tenant", "A")])
            .action(Action::DescribeKey)
            .eval(&p),
        IMPLICIT
    );
    // The explicit Deny on a context-less Decrypt carries the context reason.
    assert_eq!(
        req(BOB, Action::Decrypt).tag("tenant", "B").eval(&p),
        Decision::ExplicitDeny {
            sid: Some("NoForeignContext".into()),
            reason: DenyReason::ContextMismatch
        }
    );
    assert!(
        req(BOB, Action::Decrypt)
            .tag("tenant", "B")
            .ctx(&[("tenant", "B"), ("order", "1")])
            .eval(&p)
            .is_allowed()
    );
}

impl Req {
    fn action(mut self, a: Action) -> Self {
        self.action = a;
        self
    }
}

#[test]
fn variables_are_data_not_wildcards() {
    let p = policy(
        r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringLike":{"kms:EncryptionContext:path":"${aws:PrincipalTag/team}/*"}}}"#,
    );
    let r = |team: &str, path: &str| {
        req(ALICE, Action::Encrypt)
            .tag("team", team)
            .ctx(&[("path", path)])
            .eval(&p)
            .is_allowed()
    };
    assert!(r("ops", "ops/db"));
    assert!(!r("ops", "dev/db"));
    assert!(
        !r("*", "dev/db"),
        "a tag value * must not act as a wildcard"
    );
    assert!(r("*", "*/db"));
    let esc = policy(
        r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringLike":{"kms:EncryptionContext:x":"a${*}b*"}}}"#,
    );
    let ok = |v: &str| {
        req(ALICE, Action::Encrypt)
            .ctx(&[("x", v)])
            .eval(&esc)
            .is_allowed()
    };
    assert!(ok("a*bzzz"));
    assert!(!ok("aXbzzz"));
    let arn = policy(
        r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:owner":"${aws:PrincipalArn}",
                                            "kms:EncryptionContext:acct":"acct-${kms:CallerAccount}"}}}"#,
    );
    assert!(
        req(ALICE, Action::Encrypt)
            .ctx(&[("owner", ALICE), ("acct", "acct-111122223333")])
            .eval(&arn)
            .is_allowed()
    );
    assert_eq!(
        req(BOB, Action::Encrypt)
            .ctx(&[("owner", ALICE), ("acct", "acct-111122223333")])
            .eval(&arn),
        MISMATCH
    );
}

#[test]
fn operators_follow_aws_semantics() {
    let cond = |c: &str| {
        policy(&format!(
            r#"{{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*","Condition":{c}}}"#
        ))
    };
    let ok = |p: &Policy, pairs: &[(&str, &str)]| {
        req(ALICE, Action::Encrypt)
            .tag("Dept", "Ops")
            .ctx(pairs)
            .eval(p)
            .is_allowed()
    };
    // StringNotEquals: a missing key passes; several values are "none of".
    let p = cond(r#"{"StringNotEquals":{"kms:EncryptionContext:env":["prod","stage"]}}"#);
    assert!(ok(&p, &[]));
    assert!(ok(&p, &[("env", "dev")]));
    assert!(!ok(&p, &[("env", "stage")]));
    // IfExists: a missing key passes, a present one is tested.
    let p = cond(r#"{"StringEqualsIfExists":{"kms:EncryptionContext:env":"dev"}}"#);
    assert!(ok(&p, &[]));
    assert!(ok(&p, &[("env", "dev")]));
    assert!(!ok(&p, &[("env", "prod")]));
    let p = cond(r#"{"StringEqualsIgnoreCase":{"kms:EncryptionContext:env":"DEV"}}"#);
    assert!(ok(&p, &[("env", "dev")]));
    let p = cond(r#"{"StringNotLike":{"kms:EncryptionContext:env":"pr*"}}"#);
    assert!(ok(&p, &[("env", "dev")]));
    assert!(!ok(&p, &[("env", "prod")]));
    // ForAllValues: every request key is in the set (true for an empty context, as in AWS).
    let p =
        cond(r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant","order"]}}"#);
    assert!(ok(&p, &[("tenant", "A")]));
    assert!(ok(&p, &[("tenant", "A"), ("order", "1")]));
    assert!(!ok(&p, &[("tenant", "A"), ("extra", "1")]));
    assert!(ok(&p, &[]));
    // Paired with Null it requires a context.
    let p = cond(
        r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":"tenant"},"Null":{"kms:EncryptionContextKeys":false}}"#,
    );
    assert!(!ok(&p, &[]));
    assert!(ok(&p, &[("tenant", "A")]));
    let p = cond(r#"{"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"ten*"}}"#);
    assert!(ok(&p, &[("x", "1"), ("tenant", "A")]));
    assert!(!ok(&p, &[("x", "1")]));
    assert!(!ok(&p, &[]));
    // Caller and principal keys.
    let p = cond(
        r#"{"StringEquals":{"kms:CallerAccount":"111122223333","aws:principaltag/dept":"Ops"},
                "StringLike":{"aws:PrincipalArn":"arn:aws:iam::111122223333:user/a*"}}"#,
    );
    assert!(ok(&p, &[]));
    assert!(
        !req(BOB, Action::Encrypt)
            .tag("Dept", "Ops")
            .eval(&p)
            .is_allowed()
    );
    // A non-context condition failing is a policy denial, not a context mismatch.
    assert_eq!(
        req(BOB, Action::Encrypt)
            .ctx(&[("tenant", "A")])
            .eval(&p)
            .deny_reason(),
        Some(DenyReason::PolicyDenied)
    );
}

#[test]
fn context_mismatch_only_when_context_alone_failed() {
    let p = policy(
        r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"A","aws:PrincipalTag/tier":"gold"}}}"#,
    );
    let alice = || req(ALICE, Action::Encrypt);
    assert!(
        alice()
            .tag("tier", "gold")
            .ctx(&[("tenant", "A")])
            .eval(&p)
            .is_allowed()
    );
    assert_eq!(
        alice().tag("tier", "gold").ctx(&[("tenant", "B")]).eval(&p),
        MISMATCH
    );
    assert_eq!(
        alice().tag("tier", "iron").ctx(&[("tenant", "B")]).eval(&p),
        IMPLICIT
    );
    assert_eq!(
        req(BOB, Action::Encrypt)
            .tag("tier", "gold")
            .ctx(&[("tenant", "B")])
            .eval(&p),
        IMPLICIT,
        "a statement for another principal is not a near miss"
    );
}
