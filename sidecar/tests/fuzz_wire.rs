//! Fuzzing the request path on stable (issue 11; `docs/hardening.md`).
//!
//! Generated requests go through the real server, an in-process [`Sidecar`] on `127.0.0.1:0`, over
//! real HTTP connections. Whatever the request, the answer is a KMS answer: a 200, or a 4xx whose
//! `__type` and status are one of the client errors of `protocol::error`; never a 5xx, a hang or a
//! dropped connection. Three generators:
//! - unsigned garbage (method, target, content type, Authorization, body): never executed;
//! - a structure-aware one that starts from a valid request for a real key and mutates it, then
//!   signs it so it gets past authentication into the operation; or signs first and mutates after,
//!   and then the request must be refused (a mutation of a signed part is never executed);
//! - bodies at the limits: huge, deeply nested, duplicate members, invalid UTF-8, with the peak
//!   memory of the process checked afterwards.
//!
//! The SigV4 verifier is also fuzzed directly (no HTTP), many more cases per second.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fuzz.rs"]
mod fuzz;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kms_sidecar::auth::clients::{self, ClientStore};
use kms_sidecar::auth::sigv4::{self, SignedRequest, Verifier};
use kms_sidecar::config::{Config, Options, Secrets};
use kms_sidecar::datadir::{DataDir, RootKeySource};
use kms_sidecar::frontend::aws_json::error;
use kms_sidecar::kms::{ErrorKind, Operation, Origin};
use kms_sidecar::server::Sidecar;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
/// The largest body the server under test accepts (the configurable maximum).
const MAX_BODY: usize = 1 << 20;
/// One case (one HTTP exchange) must finish within this.
const CASE_LIMIT: Duration = Duration::from_secs(10);

/// A running sidecar and what the generators need to build valid requests for it.
struct Target {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    akid: String,
    secret: String,
    /// Keys that stay usable (the generator never disables or deletes them).
    keys: Vec<String>,
    /// Keys that lifecycle operations (disable, delete, policy changes) may act on.
    victims: Vec<String>,
    ciphertexts: Vec<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// An answer as the client saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    error_type: Option<String>,
    header_type: Option<String>,
    body: Vec<u8>,
}

fn amz_date(offset_secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs);
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(f).unwrap()
}

impl Target {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            max_body_bytes: Some(MAX_BODY as u64),
            log_level: Some("off".into()),
            ..Options::default()
        };
        let config = Config::load(&options, Secrets::default()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, issued) = rt.block_on(async {
            let mut sidecar = Sidecar::start(config).await.unwrap();
            let issued = sidecar
                .take_issued()
                .expect("first run issues a credential");
            let addr = sidecar.kms_addr();
            tokio::spawn(sidecar.run(async {
                let _ = stopped.await;
            }));
            (addr, issued)
        });
        let mut target = Self {
            rt,
            addr,
            akid: issued.access_key_id.clone(),
            secret: issued.secret.expose_secret().to_string(),
            keys: Vec::new(),
            victims: Vec::new(),
            ciphertexts: Vec::new(),
            _stop: stop,
            _dir: dir,
        };
        for i in 0..4 {
            let a = target.ok("CreateKey", json!({"Description": format!("fuzz {i}")}));
            let id = a["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
            if i < 2 {
                target.keys.push(id);
            } else {
                target.victims.push(id);
            }
        }
        let key = target.keys[0].clone();
        target.ok(
            "CreateAlias",
            json!({"AliasName": "alias/fuzz", "TargetKeyId": key}),
        );
        for ctx in [json!({}), json!({"tenant": "a"})] {
            let a = target.ok(
                "Encrypt",
                json!({"KeyId": key, "Plaintext": B64.encode("fuzz"), "EncryptionContext": ctx}),
            );
            target
                .ciphertexts
                .push(a["CiphertextBlob"].as_str().unwrap().to_string());
        }
        target
    }

    /// A valid signed call that must succeed (setup only).
    fn ok(&self, op: &str, body: Value) -> Value {
        let body = body.to_string().into_bytes();
        let headers = self.signed_headers(op, &body, 0);
        let a = self.send("POST", headers, body).unwrap();
        assert_eq!(a.status, 200, "{op}: {}", String::from_utf8_lossy(&a.body));
        serde_json::from_slice(&a.body).unwrap()
    }

    /// The headers of a request for `op` with `body`, signed as an AWS SDK signs.
    fn signed_headers(&self, op: &str, body: &[u8], date_offset: i64) -> HeaderMap {
        let mut h = base_headers(&self.addr, Some(format!("TrentService.{op}").as_bytes()));
        h.insert("x-amz-date", amz_date(date_offset).parse().unwrap());
        self.sign(&mut h, body);
        h
    }

    fn sign(&self, h: &mut HeaderMap, body: &[u8]) {
        let mut names = vec!["host", "x-amz-date"];
        for n in ["content-type", "x-amz-target"] {
            if h.contains_key(n) {
                names.push(n);
            }
        }
        let req = SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: h,
            body,
        };
        let auth = sigv4::sign(&self.akid, &self.secret, REGION, &req, &names).unwrap();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
    }

    /// Sends one request on a fresh connection; `Err` if the exchange failed or took too long.
    fn send(&self, method: &str, headers: HeaderMap, body: Vec<u8>) -> Result<Answer, String> {
        let addr = self.addr;
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        self.rt.block_on(async move {
            let exchange = async move {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                let mut req = Request::builder()
                    .method(method)
                    .uri("/")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                *req.headers_mut() = headers;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("exchange: {e}"))?;
                let status = resp.status().as_u16();
                let header_type = resp
                    .headers()
                    .get("x-amzn-errortype")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e}"))?
                    .to_bytes()
                    .to_vec();
                let error_type = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("__type").and_then(Value::as_str).map(str::to_string));
                Ok(Answer {
                    status,
                    error_type,
                    header_type,
                    body,
                })
            };
            tokio::time::timeout(CASE_LIMIT, exchange)
                .await
                .map_err(|_| format!("no answer within {CASE_LIMIT:?}"))?
        })
    }
}

fn base_headers(addr: &SocketAddr, target: Option<&[u8]>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, addr.to_string().parse().unwrap());
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Some(t) = target {
        h.insert("x-amz-target", HeaderValue::from_bytes(t).unwrap());
    }
    h
}

/// The (`__type`, status) pairs a client error may have.
fn client_errors() -> Vec<(&'static str, u16)> {
    ErrorKind::ALL
        .iter()
        .filter(|k| k.origin() == Origin::Client)
        .map(|k| (error::aws_type(*k), error::status(*k).as_u16()))
        .collect()
}

/// The property every answer has; `may_succeed` is false for requests that must be refused.
fn check(
    answer: Result<Answer, String>,
    may_succeed: bool,
    describe: impl Fn() -> String,
) -> Result<(), TestCaseError> {
    let case = || {
        let mut d = describe();
        if d.len() > 400 {
            let mut cut = 400;
            while !d.is_char_boundary(cut) {
                cut -= 1;
            }
            d.truncate(cut);
            d.push_str("...");
        }
        d
    };
    let a = answer.map_err(|e| TestCaseError::fail(format!("{}: {e}", case())))?;
    if a.status == 200 {
        prop_assert!(
            may_succeed,
            "{}: a request that must be refused succeeded",
            case()
        );
        let v: Value = serde_json::from_slice(&a.body).map_err(|e| {
            TestCaseError::fail(format!("{}: 200 with a non-JSON body: {e}", case()))
        })?;
        prop_assert!(v.is_object(), "{}: 200 with {v}", case());
        return Ok(());
    }
    let ty = a.error_type.clone().unwrap_or_default();
    prop_assert!(
        client_errors().contains(&(ty.as_str(), a.status)),
        "{}: status {} __type {:?} is not a client error; body {}",
        case(),
        a.status,
        a.error_type,
        String::from_utf8_lossy(&a.body)
    );
    prop_assert_eq!(a.header_type.as_deref(), Some(ty.as_str()), "{}", case());
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Generators

/// Bodies that stress the JSON decoder.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        Just(b"null".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"\"KeyId\"".to_vec()),
        Just(b"1e999".to_vec()),
        Just(b"{\"KeyId\":\"\xff\xfe\"}".to_vec()),
        Just(b"{\"KeyId\":\"\\ud800\"}".to_vec()),
        Just(b"{\"KeyId\":1,\"KeyId\":2}".to_vec()),
        (1usize..200_000).prop_map(|n| {
            let mut b = vec![b'['; n];
            b.extend(std::iter::repeat_n(b']', n));
            b
        }),
        (1usize..100_000).prop_map(|n| "{\"a\":".repeat(n).into_bytes()),
        (0usize..(MAX_BODY + 4096)).prop_map(|n| {
            let mut b = b"{\"KeyId\":\"".to_vec();
            b.extend(std::iter::repeat_n(b'x', n));
            b.extend_from_slice(b"\"}");
            b
        }),
        (1usize..30_000).prop_map(|n| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{}\":\"v\"", i % 7)).collect();
            format!("{{\"EncryptionContext\":{{{}}}}}", members.join(",")).into_bytes()
        }),
    ]
}

/// A value of any JSON type, sometimes large or deep.
fn weird_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        (0usize..70_000).prop_map(|n| Value::String("é".repeat(n / 2))),
        prop::collection::vec(any::<u8>(), 0..6200).prop_map(|b| Value::String(B64.encode(b))),
        (0usize..300).prop_map(|d| {
            let mut v = Value::from(1);
            for _ in 0..d {
                v = Value::Array(vec![v]);
            }
            v
        }),
        prop::collection::btree_map(".{0,12}", ".{0,12}", 0..8).prop_map(|m| json!(m)),
        (0usize..3000).prop_map(|n| {
            let m: BTreeMap<String, String> = (0..n)
                .map(|i| (format!("k{i}"), "v".repeat(i % 50)))
                .collect();
            json!(m)
        }),
    ]
}

/// Changes to the JSON document before it is serialized.
#[derive(Debug, Clone)]
enum JsonEdit {
    Remove(prop::sample::Index),
    Replace(prop::sample::Index, Value),
    Add(String, Value),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let member = prop_oneof![
        Just("KeyId".to_string()),
        Just("Plaintext".to_string()),
        Just("CiphertextBlob".to_string()),
        Just("EncryptionContext".to_string()),
        Just("NumberOfBytes".to_string()),
        Just("KeySpec".to_string()),
        Just("Policy".to_string()),
        Just("AliasName".to_string()),
        Just("TargetKeyId".to_string()),
        Just("DestinationKeyId".to_string()),
        Just("Tags".to_string()),
        Just("Limit".to_string()),
        Just("Marker".to_string()),
        "[A-Za-z]{1,12}",
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(JsonEdit::Remove),
        (any::<prop::sample::Index>(), weird_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        (member, weird_value()).prop_map(|(m, v)| JsonEdit::Add(m, v)),
    ]
}

/// Changes to the serialized body, before signing.
#[derive(Debug, Clone)]
enum TextEdit {
    None,
    Duplicate(prop::sample::Index, String),
    WrapDeep(usize),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    LoneSurrogate,
    HugeNumber(&'static str),
    Pad(usize),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        4 => Just(TextEdit::None),
        1 => (any::<prop::sample::Index>(), "\"[a-z]{0,8}\"|[0-9]{1,3}|null|\\{\\}")
            .prop_map(|(i, v)| TextEdit::Duplicate(i, v)),
        1 => (1usize..300_000).prop_map(TextEdit::WrapDeep),
        1 => any::<prop::sample::Index>().prop_map(TextEdit::Truncate),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(
            prop_oneof![Just(0xffu8), Just(0xc0), Just(0x80), Just(0xed), Just(0), any::<u8>()], 1..6))
            .prop_map(|(i, b)| TextEdit::Insert(i, b)),
        1 => Just(TextEdit::LoneSurrogate),
        1 => prop_oneof![Just("1e999"), Just("-0"), Just("18446744073709551616"), Just("1.5"), Just("-1")]
            .prop_map(TextEdit::HugeNumber),
        1 => (0usize..(MAX_BODY + 8192)).prop_map(TextEdit::Pad),
    ]
}

/// Changes after signing. `breaks` says whether the change touches what the signature covers.
#[derive(Debug, Clone)]
enum AfterSign {
    BodyFlip(prop::sample::Index, u8),
    BodyAppend(Vec<u8>),
    Target(prop::sample::Index),
    TargetGarbage(Vec<u8>),
    DateShift(i64),
    DateGarbage(String),
    ContentType(&'static str),
    SignatureFlip(prop::sample::Index),
    DropAuthorization,
    UnknownKeyId,
    SecondDate,
    ContentSha256(bool),
    ExtraHeader,
    WhitespaceAroundSigned,
}

impl AfterSign {
    fn breaks(&self, op: Operation) -> bool {
        match self {
            AfterSign::Target(i) => Operation::ALL[i.index(Operation::ALL.len())] != op,
            AfterSign::DateShift(s) => *s != 0,
            AfterSign::ContentSha256(right) => !right,
            AfterSign::ExtraHeader | AfterSign::WhitespaceAroundSigned => false,
            _ => true,
        }
    }
}

fn after_sign() -> impl Strategy<Value = AfterSign> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| AfterSign::BodyFlip(i, b)),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(AfterSign::BodyAppend),
        any::<prop::sample::Index>().prop_map(AfterSign::Target),
        prop::collection::vec(0x20u8..0xff, 0..40).prop_map(AfterSign::TargetGarbage),
        prop_oneof![Just(0i64), -100_000i64..100_000].prop_map(AfterSign::DateShift),
        "[0-9TZ]{0,20}|.{0,20}".prop_map(AfterSign::DateGarbage),
        prop_oneof![
            Just("application/json"),
            Just("application/x-amz-json-1.0"),
            Just("text/plain")
        ]
        .prop_map(AfterSign::ContentType),
        any::<prop::sample::Index>().prop_map(AfterSign::SignatureFlip),
        Just(AfterSign::DropAuthorization),
        Just(AfterSign::UnknownKeyId),
        Just(AfterSign::SecondDate),
        any::<bool>().prop_map(AfterSign::ContentSha256),
        Just(AfterSign::ExtraHeader),
        Just(AfterSign::WhitespaceAroundSigned),
    ]
}

/// A structure-aware case: an operation, the index of the valid body to start from, edits, and
/// when to sign.
#[derive(Debug, Clone)]
struct Mutant {
    op: prop::sample::Index,
    pick: prop::sample::Index,
    json: Vec<JsonEdit>,
    text: TextEdit,
    after: Option<AfterSign>,
}

fn mutant() -> impl Strategy<Value = Mutant> {
    (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::collection::vec(json_edit(), 0..3),
        text_edit(),
        prop_oneof![3 => Just(None), 1 => after_sign().prop_map(Some)],
    )
        .prop_map(|(op, pick, json, text, after)| Mutant {
            op,
            pick,
            json,
            text,
            after,
        })
}

impl Target {
    /// A valid body for `op`, with keys and ciphertexts of this sidecar.
    fn valid_body(&self, op: Operation, pick: &prop::sample::Index) -> Value {
        let key = pick.get(&self.keys).clone();
        let victim = pick.get(&self.victims).clone();
        let blob = pick.get(&self.ciphertexts).clone();
        let ctx = if blob == self.ciphertexts[1] {
            json!({"tenant": "a"})
        } else {
            json!({})
        };
        use Operation as O;
        match op {
            O::Encrypt => {
                json!({"KeyId": "alias/fuzz", "Plaintext": B64.encode("x"), "EncryptionContext": {"tenant": "b"}})
            }
            O::Decrypt => json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
            O::ReEncrypt => {
                json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "DestinationKeyId": key})
            }
            O::GenerateDataKey | O::GenerateDataKeyWithoutPlaintext => {
                json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": {"a": "b"}})
            }
            O::GenerateRandom => json!({"NumberOfBytes": 32}),
            O::CreateKey => {
                json!({"Description": "fuzz", "Tags": [{"TagKey": "t", "TagValue": "v"}]})
            }
            O::ListKeys | O::ListAliases => json!({"Limit": 5}),
            O::CreateAlias | O::UpdateAlias => {
                json!({"AliasName": format!("alias/f{}", pick.index(1000)), "TargetKeyId": victim})
            }
            O::DeleteAlias => json!({"AliasName": format!("alias/f{}", pick.index(1000))}),
            O::TagResource => json!({"KeyId": victim, "Tags": [{"TagKey": "k", "TagValue": "v"}]}),
            O::UntagResource => json!({"KeyId": victim, "TagKeys": ["k"]}),
            O::PutKeyPolicy => json!({
                "KeyId": victim,
                "PolicyName": "default",
                "Policy": r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#,
            }),
            O::GetKeyPolicy | O::ListKeyPolicies => {
                json!({"KeyId": victim, "PolicyName": "default"})
            }
            O::ScheduleKeyDeletion => json!({"KeyId": victim, "PendingWindowInDays": 7}),
            O::EnableKeyRotation => json!({"KeyId": victim, "RotationPeriodInDays": 90}),
            O::DescribeKey
            | O::ListResourceTags
            | O::GetKeyRotationStatus
            | O::ListKeyRotations => {
                json!({"KeyId": key})
            }
            _ => json!({"KeyId": victim}),
        }
    }
}

fn apply_json(mut v: Value, edits: &[JsonEdit]) -> Value {
    for e in edits {
        let Some(obj) = v.as_object_mut() else { break };
        match e {
            JsonEdit::Remove(i) if !obj.is_empty() => {
                let k = obj.keys().nth(i.index(obj.len())).cloned().unwrap();
                obj.remove(&k);
            }
            JsonEdit::Replace(i, value) if !obj.is_empty() => {
                let k = obj.keys().nth(i.index(obj.len())).cloned().unwrap();
                obj.insert(k, value.clone());
            }
            JsonEdit::Add(k, value) => {
                obj.insert(k.clone(), value.clone());
            }
            _ => {}
        }
    }
    v
}

fn apply_text(mut b: Vec<u8>, edit: &TextEdit) -> Vec<u8> {
    match edit {
        TextEdit::None => {}
        TextEdit::Duplicate(i, value) => {
            // Repeat one member name with another value, ahead of the original.
            let text = String::from_utf8_lossy(&b).into_owned();
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text)
                && !m.is_empty()
            {
                let k = m.keys().nth(i.index(m.len())).unwrap();
                let dup = format!("{{{}:{value},", serde_json::to_string(k).unwrap());
                b = [dup.as_bytes(), &b[1..]].concat();
            }
        }
        TextEdit::WrapDeep(depth) => {
            let d = (*depth).min(MAX_BODY.saturating_sub(b.len()) / 2 + 16);
            let mut out = vec![b'['; d];
            out.extend_from_slice(&b);
            out.extend(std::iter::repeat_n(b']', d));
            b = out;
        }
        TextEdit::Truncate(i) => {
            let at = i.index(b.len() + 1);
            b.truncate(at);
        }
        TextEdit::Insert(i, bytes) => {
            let at = i.index(b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        TextEdit::LoneSurrogate => {
            if let Some(p) = b.windows(2).position(|w| w == b":\"") {
                b.splice(p + 2..p + 2, b"\\udc00".iter().copied());
            }
        }
        TextEdit::HugeNumber(n) => {
            if let Some(p) = b.iter().position(u8::is_ascii_digit) {
                b.splice(p..p, n.bytes());
            } else if b.len() > 1 {
                let member = format!("\"NumberOfBytes\":{n},");
                b.splice(1..1, member.bytes());
            }
        }
        TextEdit::Pad(n) => {
            let at = b.len().saturating_sub(1);
            b.splice(at..at, std::iter::repeat_n(b' ', *n));
        }
    }
    b
}

impl Target {
    /// Builds, signs and mutates one structure-aware case; returns it with whether it may succeed.
    fn build(&self, m: &Mutant) -> (HeaderMap, Vec<u8>, bool) {
        let op = Operation::ALL[m.op.index(Operation::ALL.len())];
        let body = apply_json(self.valid_body(op, &m.pick), &m.json);
        let mut body = apply_text(serde_json::to_vec(&body).unwrap(), &m.text);
        let mut h = self.signed_headers(op.as_str(), &body, 0);
        let Some(after) = &m.after else {
            return (h, body, true);
        };
        match after {
            AfterSign::BodyFlip(i, bit) if !body.is_empty() => {
                let at = i.index(body.len());
                body[at] ^= 1 << bit;
            }
            AfterSign::BodyFlip(..) => body.push(b' '),
            AfterSign::BodyAppend(extra) => body.extend_from_slice(extra),
            AfterSign::Target(i) => {
                let other = Operation::ALL[i.index(Operation::ALL.len())];
                let v = format!("TrentService.{}", other.as_str());
                h.insert("x-amz-target", v.parse().unwrap());
            }
            AfterSign::TargetGarbage(bytes) => {
                let v = HeaderValue::from_bytes(bytes).unwrap_or(HeaderValue::from_static("x"));
                h.insert("x-amz-target", v);
            }
            AfterSign::DateShift(s) => {
                h.insert("x-amz-date", amz_date(*s).parse().unwrap());
            }
            AfterSign::DateGarbage(s) => {
                let v = HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("0"));
                h.insert("x-amz-date", v);
            }
            AfterSign::ContentType(ct) => {
                h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            AfterSign::SignatureFlip(i) => {
                let mut auth = h[http::header::AUTHORIZATION].to_str().unwrap().to_string();
                let sig_start = auth.len() - 64;
                let at = sig_start + i.index(64);
                let c = auth.as_bytes()[at];
                let flipped = if c == b'0' { "1" } else { "0" };
                auth.replace_range(at..=at, flipped);
                h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
            }
            AfterSign::DropAuthorization => {
                h.remove(http::header::AUTHORIZATION);
            }
            AfterSign::UnknownKeyId => {
                let auth = h[http::header::AUTHORIZATION].to_str().unwrap();
                let auth = auth.replace(&self.akid, "AKSCUNKNOWN000000000");
                h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
            }
            AfterSign::SecondDate => {
                h.append("x-amz-date", amz_date(1).parse().unwrap());
            }
            AfterSign::ContentSha256(right) => {
                use sha2::Digest as _;
                let hash = if *right {
                    hex::encode(sha2::Sha256::digest(&body))
                } else {
                    "0".repeat(64)
                };
                h.insert("x-amz-content-sha256", hash.parse().unwrap());
            }
            AfterSign::ExtraHeader => {
                h.insert("x-fuzz-unsigned", HeaderValue::from_static("anything"));
            }
            AfterSign::WhitespaceAroundSigned => {
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-amz-json-1.1   "),
                );
            }
        }
        (h, body, !after.breaks(op))
    }
}

/// Unsigned or badly signed requests of every shape: never executed.
#[derive(Debug, Clone)]
struct Garbage {
    method: &'static str,
    target: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    authorization: Option<String>,
    date: Option<String>,
    body: Vec<u8>,
}

fn garbage() -> impl Strategy<Value = Garbage> {
    let target = prop_oneof![
        Just(None),
        any::<prop::sample::Index>().prop_map(|i| Some(
            format!("TrentService.{}", i.get(Operation::ALL).as_str()).into_bytes()
        )),
        prop::collection::vec(0x20u8..0xff, 0..64).prop_map(Some),
        Just(Some(b"TrentService.".to_vec())),
        Just(Some(b"trentservice.encrypt".to_vec())),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some(b"application/x-amz-json-1.1".to_vec())),
        Just(Some(b"application/json; charset=utf-8".to_vec())),
        prop::collection::vec(0x20u8..0xff, 0..40).prop_map(Some),
    ];
    (
        prop_oneof![
            Just("POST"),
            Just("GET"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH")
        ],
        target,
        content_type,
        prop::option::of(authorization()),
        prop::option::of(prop_oneof![Just(amz_date(0)), "[0-9TZ]{0,20}"]),
        hostile_body(),
    )
        .prop_map(
            |(method, target, content_type, authorization, date, body)| Garbage {
                method,
                target,
                content_type,
                authorization,
                date,
                body,
            },
        )
}

/// `Authorization` header values: well-formed-looking ones with each part varied, and noise.
fn authorization() -> impl Strategy<Value = String> {
    let algorithm = prop_oneof![
        Just("AWS4-HMAC-SHA256 ".to_string()),
        Just("AWS4-HMAC-SHA256".to_string()),
        Just("aws4-hmac-sha256 ".to_string()),
        Just("AWS4-HMAC-SHA256  ".to_string()),
        Just("AWS4-HMAC-SHA1 ".to_string()),
        ".{0,20}",
    ];
    let part = prop_oneof![
        Just("AKSCFUZZ".to_string()),
        Just(String::new()),
        "[0-9]{8}",
        "[0-9]{7}é",
        Just("us-east-1".to_string()),
        Just("kms".to_string()),
        Just("aws4_request".to_string()),
        "[^/,]{0,12}",
    ];
    let credential = prop::collection::vec(part, 0..8).prop_map(|p| p.join("/"));
    let signed = prop_oneof![
        Just("host;x-amz-date".to_string()),
        Just("x-amz-date;host".to_string()),
        Just("host;host".to_string()),
        Just("Host;X-Amz-Date".to_string()),
        Just(String::new()),
        Just(";".to_string()),
        Just("content-type;host;x-amz-date;x-amz-target".to_string()),
        Just("host;x-missing".to_string()),
        "[a-z;-]{0,30}",
    ];
    let signature = prop_oneof![
        "[0-9a-f]{64}",
        "[0-9a-f]{63}",
        "[0-9a-f]{65}",
        "[0-9a-zA-Z]{64}",
        "é{32}",
        ".{0,70}",
    ];
    let sep = prop_oneof![Just(", "), Just(","), Just(",,"), Just(" , "), Just(";")];
    (
        algorithm,
        prop::option::of(credential),
        prop::option::of(signed),
        prop::option::of(signature),
        sep,
        any::<bool>(),
    )
        .prop_map(|(alg, cred, signed, sig, sep, extra)| {
            let mut parts = Vec::new();
            if let Some(c) = cred {
                parts.push(format!("Credential={c}"));
            }
            if let Some(s) = signed {
                parts.push(format!("SignedHeaders={s}"));
            }
            if let Some(s) = sig {
                parts.push(format!("Signature={s}"));
            }
            if extra {
                parts.push("Foo=bar".into());
            }
            format!("{alg}{}", parts.join(sep))
        })
}

impl Target {
    fn garbage_request(&self, g: &Garbage) -> (HeaderMap, Vec<u8>) {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, self.addr.to_string().parse().unwrap());
        if let Some(t) = g
            .target
            .as_ref()
            .and_then(|t| HeaderValue::from_bytes(t).ok())
        {
            h.insert("x-amz-target", t);
        }
        if let Some(c) = g
            .content_type
            .as_ref()
            .and_then(|c| HeaderValue::from_bytes(c).ok())
        {
            h.insert(http::header::CONTENT_TYPE, c);
        }
        if let Some(a) = g
            .authorization
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            h.insert(http::header::AUTHORIZATION, a);
        }
        if let Some(d) = g.date.as_ref().and_then(|d| HeaderValue::from_str(d).ok()) {
            h.insert("x-amz-date", d);
        }
        (h, g.body.clone())
    }
}

// ------------------------------------------------------------------------------------------------
// The tests. One server for all HTTP cases (starting one costs more than hundreds of cases).

#[test]
fn requests_through_the_real_server() {
    let target = Target::start();
    let dog = fuzz::Watchdog::new("requests_through_the_real_server", CASE_LIMIT * 2);
    let rss_before = fuzz::peak_rss();
    let signed_ok = std::cell::Cell::new(0u32);
    let outcomes = std::cell::RefCell::new(BTreeMap::<String, u32>::new());

    // Unsigned and badly signed requests: never executed.
    proptest!(fuzz::config(300), |(g in garbage())| {
        let _case = dog.case();
        let (h, body) = target.garbage_request(&g);
        check(target.send(g.method, h, body), false, || format!("{g:?}"))?;
    });

    // Structure-aware: valid requests mutated, signed before or after the mutation.
    proptest!(fuzz::config(800), |(m in mutant())| {
        let _case = dog.case();
        let (h, body, may_succeed) = target.build(&m);
        let answer = target.send("POST", h, body);
        if let Ok(a) = &answer {
            if a.status == 200 {
                signed_ok.set(signed_ok.get() + 1);
            }
            let outcome = a.error_type.clone().unwrap_or_else(|| a.status.to_string());
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
        }
        check(answer, may_succeed, || format!("{m:?}"))?;
    });
    let signed_ok = signed_ok.get();
    eprintln!("structure-aware cases by outcome: {:?}", outcomes.borrow());
    assert!(
        signed_ok > 50,
        "too few mutated requests got past authentication into an operation: {signed_ok}"
    );

    // The usable keys still work: no case broke the server.
    let a = target.ok(
        "Encrypt",
        json!({"KeyId": target.keys[1], "Plaintext": B64.encode("still here")}),
    );
    assert!(a["CiphertextBlob"].is_string());

    if let (Some(before), Some(after)) = (rss_before, fuzz::peak_rss()) {
        let grown = after.saturating_sub(before);
        eprintln!("peak RSS {} MiB -> {} MiB", before >> 20, after >> 20);
        assert!(
            grown < 256 << 20,
            "peak memory grew by {} MiB over the run",
            grown >> 20
        );
    }
}

/// The body limits, case by case: each answer a KMS error within a second or two.
#[test]
fn bodies_at_the_limits() {
    let target = Target::start();
    let deep_arrays = {
        let mut b = vec![b'['; MAX_BODY / 2];
        b.extend(std::iter::repeat_n(b']', MAX_BODY / 2));
        b
    };
    let deep_objects = "{\"KeyId\":".repeat(MAX_BODY / 9).into_bytes();
    let long_string = format!("{{\"KeyId\":\"{}\"}}", "k".repeat(MAX_BODY - 20)).into_bytes();
    let many_members = {
        let n = MAX_BODY / 16;
        let m: Vec<String> = (0..n).map(|i| format!("\"c{i:07}\":\"v\"")).collect();
        format!(
            "{{\"KeyId\":\"{}\",\"Plaintext\":\"eA==\",\"EncryptionContext\":{{{}}}}}",
            target.keys[0],
            m.join(",")
        )
        .into_bytes()
    };
    let duplicates = format!(
        "{{\"KeyId\":\"{}\",\"Plaintext\":\"eA==\",\"Plaintext\":\"eQ==\"}}",
        target.keys[0]
    )
    .into_bytes();
    let over = vec![b' '; MAX_BODY + 1];
    let invalid_utf8 = b"{\"KeyId\":\"\xc0\xaf\"}".to_vec();
    // (name, body, the error expected; "" where success is also a fine answer)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("deep arrays", deep_arrays, "SerializationException"),
        ("deep objects", deep_objects, "SerializationException"),
        ("long string", long_string, "ValidationException"),
        ("many context members", many_members, ""),
        ("duplicate member", duplicates, "SerializationException"),
        ("over the limit", over, "ValidationException"),
        ("invalid UTF-8", invalid_utf8, "SerializationException"),
    ];
    for (name, body, expected) in cases {
        let len = body.len();
        let started = std::time::Instant::now();
        let h = target.signed_headers("Encrypt", &body, 0);
        let a = target.send("POST", h, body).unwrap();
        let took = started.elapsed();
        eprintln!(
            "{name}: {len} bytes -> {} {:?} in {took:?}",
            a.status, a.error_type
        );
        assert!(took < Duration::from_secs(3), "{name} took {took:?}");
        if !expected.is_empty() {
            assert_eq!(a.error_type.as_deref(), Some(expected), "{name}");
        }
        check(Ok(a), expected.is_empty(), || name.to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The SigV4 verifier on its own: any header set is refused with an authentication error unless
/// it carries the signature `sign` makes with the client's secret.
#[test]
fn sigv4_verifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Arc::new(DataDir::open(tmp.path(), &RootKeySource::DataDir).unwrap());
    let issued = clients::add(&dir, "fuzz", BTreeMap::new()).unwrap();
    let store = ClientStore::open(dir, "111122223333").unwrap();
    let verifier = Verifier::new(Duration::from_secs(300));
    let akid = issued.access_key_id.clone();
    let secret = issued.secret.expose_secret().to_string();
    let auth_errors = [
        ErrorKind::IncompleteSignature,
        ErrorKind::InvalidSignature,
        ErrorKind::MissingAuthenticationToken,
        ErrorKind::UnrecognizedClient,
    ];
    let dog = fuzz::Watchdog::new("sigv4_verifier", Duration::from_secs(5));
    let header = prop_oneof![
        Just("host"),
        Just("x-amz-date"),
        Just("x-amz-target"),
        Just("content-type"),
        Just("x-amz-content-sha256"),
        Just("authorization"),
    ];
    let value = prop_oneof![
        Just(amz_date(0)),
        "[ -~]{0,40}",
        prop::collection::vec(0x80u8..0xff, 1..8)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let case = (
        authorization(),
        prop::collection::vec((header, value), 0..6),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    proptest!(fuzz::config(3000), |((auth, extra, honest, body, use_real_akid) in case)| {
        let _case = dog.case();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:7300"));
        h.insert("x-amz-date", amz_date(0).parse().unwrap());
        let auth = if use_real_akid { auth.replace("AKSCFUZZ", &akid) } else { auth };
        if let Ok(v) = HeaderValue::from_str(&auth) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        // Half the time the header set is then signed honestly, and one change may follow.
        let signed = honest.is_some();
        if signed {
            let req = SignedRequest { method: "POST", path: "/", query: "", headers: &h, body: &body };
            let a = sigv4::sign(&akid, &secret, REGION, &req, &["host", "x-amz-date"]).unwrap();
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        let mut changed = false;
        for (name, v) in &extra {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                let name = HeaderName::from_static(name);
                changed |= matches!(name.as_str(), "host" | "x-amz-date" | "authorization" | "x-amz-content-sha256");
                h.append(name, v);
            }
        }
        let req = SignedRequest { method: "POST", path: "/", query: "", headers: &h, body: &body };
        match verifier.verify(&store, &req, SystemTime::now()) {
            Ok(c) => {
                prop_assert!(signed, "verified without an honest signature: {auth:?} {extra:?}");
                prop_assert_eq!(&c.access_key_id, &akid);
            }
            Err(e) => {
                prop_assert!(auth_errors.contains(&e.error.kind()), "{:?}", e.error.kind());
                prop_assert!(!signed || changed, "honest signature refused: {:?}", e.error);
            }
        }
    });
}
