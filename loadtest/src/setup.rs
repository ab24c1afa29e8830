//! The setup and cleanup phases: the few sequential KMS calls around the measured load (create the
//! keys, encrypt the payloads the load decrypts, schedule the keys' deletion). They share the
//! principal's quota with the load and often with other traffic, so each call backs off and retries
//! on throttling and transient errors ([`Backoff`]), and a cleanup that still fails is reported in
//! a [`CleanupReport`], never raised: losing a run's report to a throttled `ScheduleKeyDeletion`
//! would throw away the measurement to save a warning.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::backoff::{Backoff, Jitter};
use crate::error::LoadError;
use crate::http::Conn;
use crate::kms::{Workload, WorkloadSpec, error_type, payload};
use crate::sign::{Credential, Signer};
use crate::target::Target;

/// What the setup phase did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SetupReport {
    pub keys_created: usize,
    pub keys_used: usize,
    pub ciphertexts: usize,
    /// Every attempt, retries included.
    pub requests: u64,
    /// Attempts that were retries after a retryable error.
    #[serde(default)]
    pub retries: u64,
    pub seconds: f64,
}

/// What the cleanup phase did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CleanupReport {
    pub keys_scheduled: usize,
    /// Keys whose deletion could not be scheduled (they are left to delete by hand).
    pub failed_keys: Vec<String>,
    /// The last failure with its causes, `null` when every key was scheduled.
    pub error: Option<String>,
    pub requests: u64,
    pub retries: u64,
    pub seconds: f64,
}

impl CleanupReport {
    /// The warning to print and record, `None` when every key was scheduled for deletion.
    pub fn warning(&self) -> Option<String> {
        if self.failed_keys.is_empty() {
            return None;
        }
        Some(format!(
            "cleanup: {} of {} key(s) not scheduled for deletion ({}); delete them yourself: {}",
            self.failed_keys.len(),
            self.failed_keys.len() + self.keys_scheduled,
            self.error.as_deref().unwrap_or("unknown error"),
            self.failed_keys.join(" ")
        ))
    }
}

/// A sequential KMS client for setup and cleanup (one connection, the first principal) that
/// retries what a retry can help with.
#[derive(Debug)]
pub struct SetupClient<'a> {
    cred: &'a Credential,
    signer: Signer,
    conn: Conn,
    timeout: Duration,
    backoff: Backoff,
    jitter: Jitter,
    /// Every attempt, retries included.
    pub requests: u64,
    pub retries: u64,
}

impl<'a> SetupClient<'a> {
    pub fn new(
        target: &Target,
        cred: &'a Credential,
        region: &str,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            cred,
            signer: Signer::new(target, region)?,
            conn: Conn::new(target.addr),
            timeout,
            backoff,
            jitter: Jitter::default(),
            requests: 0,
            retries: 0,
        })
    }

    /// Calls `target` (e.g. `TrentService.CreateKey`) until it succeeds, fails for good, or the
    /// backoff's attempts or time run out ([`LoadError::GaveUp`], carrying the last failure).
    pub async fn call(&mut self, target: &'static str, body: &Value) -> Result<Value, LoadError> {
        let op = target.strip_prefix("TrentService.").unwrap_or(target);
        let body = Bytes::from(body.to_string());
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match self.attempt(op, target, body.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            let elapsed = started.elapsed();
            match self
                .backoff
                .delay(attempts, elapsed, self.jitter.next_unit())
            {
                Some(wait) => {
                    self.retries += 1;
                    tokio::time::sleep(wait).await;
                }
                // Retries are off (one attempt, or no time): the failure as it came.
                None if attempts == 1 => return Err(err),
                None => {
                    return Err(LoadError::GaveUp {
                        op,
                        attempts,
                        seconds: elapsed.as_secs_f64(),
                        last: Box::new(err),
                    });
                }
            }
        }
    }

    /// One attempt; a non-200 answer is an error naming the KMS error type.
    async fn attempt(
        &mut self,
        op: &'static str,
        target: &'static str,
        body: Bytes,
    ) -> Result<Value, LoadError> {
        let (req, _) = self
            .signer
            .request(self.cred, target, body, SystemTime::now())?;
        self.requests += 1;
        let (status, bytes) = self.conn.send(req, self.timeout).await?;
        if status != 200 {
            return Err(LoadError::Call {
                op,
                status,
                error_type: error_type(status, &bytes),
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// The setup phase: creates (or takes) keys and encrypts payloads to get ciphertexts to decrypt.
/// Every key it creates is pushed to `created` at once, so a caller can clean up after a setup
/// that fails halfway.
pub async fn prepare(
    target: &Target,
    spec: &WorkloadSpec,
    timeout: Duration,
    backoff: Backoff,
    created: &mut Vec<String>,
) -> Result<(Workload, SetupReport), LoadError> {
    let started = Instant::now();
    let cred = spec.creds.first().ok_or(LoadError::NoCredentials)?;
    let needs_cts = spec
        .mix
        .weights()
        .iter()
        .any(|(op, _)| op.needs_ciphertext());
    if spec.key_ids.is_empty() && spec.keys == 0 {
        return Err(LoadError::Invalid("--keys must be at least 1".into()));
    }
    if needs_cts && spec.ciphertexts_per_key == 0 {
        return Err(LoadError::Invalid(
            "the mix decrypts, so --ciphertexts-per-key must be at least 1".into(),
        ));
    }
    let mut client = SetupClient::new(target, cred, &spec.region, timeout, backoff)?;
    let key_ids = if spec.key_ids.is_empty() {
        for _ in 0..spec.keys {
            let v = client
                .call(
                    "TrentService.CreateKey",
                    &json!({"Description": "kms-loadtest"}),
                )
                .await?;
            let id = v["KeyMetadata"]["KeyId"]
                .as_str()
                .ok_or(LoadError::SetupShape {
                    op: "CreateKey",
                    field: "KeyMetadata.KeyId",
                })?;
            created.push(id.to_string());
        }
        created.clone()
    } else {
        spec.key_ids.clone()
    };
    let mut cts = Vec::new();
    if needs_cts {
        for key in &key_ids {
            for n in 0..spec.ciphertexts_per_key {
                let mut body = json!({
                    "KeyId": key,
                    "Plaintext": B64.encode(payload(spec.payload_bytes, n as u64 + 1)),
                });
                if !spec.context.is_empty() {
                    body["EncryptionContext"] = json!(spec.context);
                }
                let v = client.call("TrentService.Encrypt", &body).await?;
                let ct = v["CiphertextBlob"].as_str().ok_or(LoadError::SetupShape {
                    op: "Encrypt",
                    field: "CiphertextBlob",
                })?;
                cts.push(ct.to_string());
            }
        }
    }
    let report = SetupReport {
        keys_created: created.len(),
        keys_used: key_ids.len(),
        ciphertexts: cts.len(),
        requests: client.requests,
        retries: client.retries,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((Workload::build(spec, key_ids, cts), report))
}

/// Schedules the deletion of `created` keys (7 days, the minimum KMS allows). Never fails: a key
/// whose deletion cannot be scheduled is listed in the report, and once one call runs out of
/// retries the keys after it are listed without being tried, so cleanup takes at most one retry
/// budget beyond its successful calls.
pub async fn cleanup(
    target: &Target,
    spec: &WorkloadSpec,
    created: &[String],
    timeout: Duration,
    backoff: Backoff,
) -> CleanupReport {
    let started = Instant::now();
    let mut report = CleanupReport::default();
    let client = spec
        .creds
        .first()
        .ok_or(LoadError::NoCredentials)
        .and_then(|cred| SetupClient::new(target, cred, &spec.region, timeout, backoff));
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            report.failed_keys = created.to_vec();
            report.error = Some(e.chain());
            return report;
        }
    };
    for (i, key) in created.iter().enumerate() {
        let body = json!({"KeyId": key, "PendingWindowInDays": 7});
        match client.call("TrentService.ScheduleKeyDeletion", &body).await {
            Ok(_) => report.keys_scheduled += 1,
            Err(e) => {
                report.error = Some(e.chain());
                // Retries ran out: the quota (or the sidecar) stays unavailable, and waiting a
                // whole budget per key would only delay the report.
                if matches!(e, LoadError::GaveUp { .. }) {
                    report.failed_keys.extend_from_slice(&created[i..]);
                    break;
                }
                report.failed_keys.push(key.clone());
            }
        }
    }
    report.requests = client.requests;
    report.retries = client.retries;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_warning_names_the_keys_left() {
        let mut r = CleanupReport {
            keys_scheduled: 2,
            ..CleanupReport::default()
        };
        assert_eq!(r.warning(), None);
        r.failed_keys = vec!["k3".into(), "k4".into()];
        r.error = Some("ScheduleKeyDeletion answered HTTP 400 ThrottlingException".into());
        assert_eq!(
            r.warning().unwrap(),
            "cleanup: 2 of 4 key(s) not scheduled for deletion (ScheduleKeyDeletion answered \
             HTTP 400 ThrottlingException); delete them yourself: k3 k4"
        );
    }
}
