//! Crash consistency (issue 11; `docs/hardening.md`): the real sidecar process is killed with
//! SIGKILL at random moments while a client runs CreateKey, RotateKeyOnDemand, CreateAlias,
//! ScheduleKeyDeletion and Encrypt, then restarted on the same data directory. After every restart
//! everything the client was told succeeded is still there: each key with at least its
//! acknowledged versions, each alias pointing at its key, each key scheduled for deletion still
//! pending, and every ciphertext decrypting to its plaintext.
//!
//! Kill moments come from a seeded generator (`KMS_CRASH_SEED`), so a failing run repeats; the
//! number of cycles is bounded (`KMS_CRASH_CYCLES`, 50 by default).
//!
//! A second test damages each kind of file in a data directory the way a torn write or a bad disk
//! would, and checks that the start fails naming the file: nothing is ever dropped silently.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::KeyState;
use kms_sidecar_e2e::{Creds, Sidecar, Start, new_key, sdk_client};

/// SplitMix64: small, seedable, good enough to pick moments and operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the client was told succeeded.
#[derive(Debug, Default)]
struct Acked {
    /// Key id -> versions acknowledged (1 + successful on-demand rotations).
    keys: BTreeMap<String, usize>,
    aliases: BTreeMap<String, String>,
    /// Keys whose ScheduleKeyDeletion succeeded; nothing is encrypted under them afterwards.
    doomed: BTreeSet<String>,
    /// Keys something was encrypted under (never scheduled for deletion, so they keep decrypting).
    used: BTreeSet<String>,
    /// (ciphertext, plaintext, context value)
    ciphertexts: Vec<(Vec<u8>, Vec<u8>, String)>,
    ops: u64,
}

impl Acked {
    fn live_key(&self, rng: &mut Rng) -> Option<String> {
        let live: Vec<&String> = self
            .keys
            .keys()
            .filter(|k| !self.doomed.contains(*k))
            .collect();
        (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize].clone())
    }
}

/// Runs operations until the sidecar dies under it; records each success as soon as it is known.
async fn workload(kms: aws_sdk_kms::Client, acked: Arc<Mutex<Acked>>, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    loop {
        n += 1;
        let roll = rng.below(100);
        let key = acked.lock().unwrap().live_key(&mut rng);
        let result: Result<(), String> = match (roll, key) {
            (0..15, _) | (_, None) => kms
                .create_key()
                .send()
                .await
                .map(|out| {
                    let id = out.key_metadata().unwrap().key_id().to_string();
                    acked.lock().unwrap().keys.insert(id, 1);
                })
                .map_err(|e| format!("{e:?}")),
            (15..35, Some(key)) => kms
                .rotate_key_on_demand()
                .key_id(&key)
                .send()
                .await
                .map(|_| *acked.lock().unwrap().keys.get_mut(&key).unwrap() += 1)
                .map_err(|e| format!("{e:?}")),
            (35..50, Some(key)) => {
                let alias = format!("alias/crash-{seed:x}-{n}");
                kms.create_alias()
                    .alias_name(&alias)
                    .target_key_id(&key)
                    .send()
                    .await
                    .map(|_| {
                        acked.lock().unwrap().aliases.insert(alias, key);
                    })
                    .map_err(|e| format!("{e:?}"))
            }
            (50..58, Some(key)) if !acked.lock().unwrap().used.contains(&key) => kms
                .schedule_key_deletion()
                .key_id(&key)
                .pending_window_in_days(7)
                .send()
                .await
                .map(|_| {
                    acked.lock().unwrap().doomed.insert(key);
                })
                .map_err(|e| format!("{e:?}")),
            (_, Some(key)) => {
                // Marked used before the call, so no deletion is scheduled for it from now on.
                acked.lock().unwrap().used.insert(key.clone());
                let plaintext = format!("crash {seed:x} {n}").into_bytes();
                let context = format!("c{}", rng.below(4));
                kms.encrypt()
                    .key_id(&key)
                    .plaintext(Blob::new(plaintext.clone()))
                    .encryption_context("k", &context)
                    .send()
                    .await
                    .map(|out| {
                        let blob = out.ciphertext_blob().unwrap().as_ref().to_vec();
                        acked
                            .lock()
                            .unwrap()
                            .ciphertexts
                            .push((blob, plaintext, context));
                    })
                    .map_err(|e| format!("{e:?}"))
            }
        };
        match result {
            Ok(()) => acked.lock().unwrap().ops += 1,
            // The process is gone (killed): nothing more can be acknowledged.
            Err(e) if e.contains("DispatchFailure") || e.contains("ResponseError") => return,
            // A refusal (e.g. the rotation limit) acknowledges nothing; carry on.
            Err(_) => {}
        }
    }
}

/// Checks everything acknowledged against the restarted sidecar.
async fn verify(kms: &aws_sdk_kms::Client, acked: &Acked, cycle: u64) {
    let mut listed = BTreeSet::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_keys()
            .limit(1000)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        listed.extend(page.keys().iter().map(|k| k.key_id().unwrap().to_string()));
        marker = page.next_marker().map(str::to_string);
        if marker.is_none() {
            break;
        }
    }
    for (key, versions) in &acked.keys {
        assert!(
            listed.contains(key),
            "cycle {cycle}: acknowledged key {key} is gone"
        );
        if *versions > 1 {
            let rotations = kms
                .list_key_rotations()
                .key_id(key)
                .limit(1000)
                .send()
                .await
                .unwrap();
            assert!(
                rotations.rotations().len() + 1 >= *versions,
                "cycle {cycle}: key {key} has {} versions, {versions} were acknowledged",
                rotations.rotations().len() + 1
            );
        }
    }
    for key in &acked.doomed {
        let meta = kms.describe_key().key_id(key).send().await.unwrap();
        assert_eq!(
            meta.key_metadata().unwrap().key_state(),
            Some(&KeyState::PendingDeletion),
            "cycle {cycle}: key {key} lost its scheduled deletion"
        );
    }
    let mut aliases = BTreeMap::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_aliases()
            .limit(100)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        for a in page.aliases() {
            aliases.insert(
                a.alias_name().unwrap().to_string(),
                a.target_key_id().map(str::to_string),
            );
        }
        marker = page.next_marker().map(str::to_string);
        if marker.is_none() {
            break;
        }
    }
    for (alias, key) in &acked.aliases {
        assert_eq!(
            aliases.get(alias),
            Some(&Some(key.clone())),
            "cycle {cycle}: acknowledged alias {alias} does not resolve to {key}"
        );
    }
    // Decrypts run a few at a time; each must give back its plaintext.
    let mut pending = tokio::task::JoinSet::new();
    for (i, (blob, plaintext, context)) in acked.ciphertexts.iter().enumerate() {
        let kms = kms.clone();
        let (blob, plaintext, context) = (blob.clone(), plaintext.clone(), context.clone());
        pending.spawn(async move {
            let out = kms
                .decrypt()
                .ciphertext_blob(Blob::new(blob))
                .encryption_context("k", context)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("cycle {cycle}: ciphertext {i} no longer decrypts: {e:?}")
                });
            assert_eq!(out.plaintext().unwrap().as_ref(), plaintext.as_slice());
        });
        if pending.len() >= 8 {
            pending.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = pending.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let cycles = env_u64("KMS_CRASH_CYCLES", 50);
    let seed = env_u64("KMS_CRASH_SEED", 0x00c0_ffee);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut creds: Option<Creds> = None;
    let started = Instant::now();
    let mut killed_mid_run = 0u64;
    for cycle in 0..cycles {
        let start = Start {
            creds: creds.clone(),
            ..Start::default()
        };
        let sidecar = Sidecar::start_with(dir.path(), start).unwrap_or_else(|out| {
            panic!("cycle {cycle}: the sidecar did not restart after SIGKILL:\n{out}")
        });
        creds = Some(sidecar.creds.clone());
        let kms = sdk_client(&sidecar.kms_url, &sidecar.creds);
        {
            let snapshot = std::mem::take(&mut *acked.lock().unwrap());
            verify(&kms, &snapshot, cycle).await;
            *acked.lock().unwrap() = snapshot;
        }
        let ops_before = acked.lock().unwrap().ops;
        let work = tokio::spawn(workload(kms, acked.clone(), rng.next()));
        // Kill somewhere in the first ~300 ms of work: mid-request, mid-fsync, between calls.
        tokio::time::sleep(Duration::from_millis(5 + rng.below(300))).await;
        drop(sidecar); // SIGKILL, then wait for the process
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("the client noticed the kill")
            .unwrap();
        if acked.lock().unwrap().ops > ops_before {
            killed_mid_run += 1;
        }
    }
    // One last restart checks what the final kill left.
    let sidecar = Sidecar::start_with(
        dir.path(),
        Start {
            creds,
            ..Start::default()
        },
    )
    .unwrap_or_else(|out| panic!("the final restart failed:\n{out}"));
    let kms = sdk_client(&sidecar.kms_url, &sidecar.creds);
    let a = std::mem::take(&mut *acked.lock().unwrap());
    verify(&kms, &a, cycles).await;
    eprintln!(
        "{cycles} SIGKILL cycles in {:?} (seed {seed:#x}): {} acknowledged operations, {} keys, {} with rotations, {} aliases, {} scheduled deletions, {} ciphertexts; {killed_mid_run} kills landed after work had started",
        started.elapsed(),
        a.ops,
        a.keys.len(),
        a.keys.values().filter(|v| **v > 1).count(),
        a.aliases.len(),
        a.doomed.len(),
        a.ciphertexts.len(),
    );
    assert!(
        a.ops > cycles,
        "the workload barely ran: {} operations",
        a.ops
    );
}

// ------------------------------------------------------------------------------------------------
// Torn and damaged files.

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut at half its length (a torn write).
    TruncateHalf,
    /// The last few bytes cut (a torn append; cutting at half could land on a record boundary,
    /// which leaves a valid, shorter log).
    TearTail,
    /// Empty (a file created but never written).
    Empty,
    /// A block of zeros in the middle (what some filesystems show after a crash).
    ZeroBlock,
    Delete,
}

fn damage(path: &Path, how: Damage) {
    let bytes = std::fs::read(path).unwrap();
    match how {
        Damage::TruncateHalf => std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap(),
        Damage::TearTail => std::fs::write(path, &bytes[..bytes.len() - 10]).unwrap(),
        Damage::Empty => std::fs::write(path, b"").unwrap(),
        Damage::ZeroBlock => {
            let mut b = bytes;
            let (from, to) = (b.len() / 3, (b.len() / 3 + 16).min(b.len()));
            b[from..to].fill(0);
            std::fs::write(path, b).unwrap();
        }
        Damage::Delete => std::fs::remove_file(path).unwrap(),
    }
}

#[tokio::test]
async fn torn_or_damaged_files_stop_the_start_naming_the_file() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let sidecar = Sidecar::start(&data);
    let creds = sidecar.creds.clone();
    let kms = sidecar.sdk();
    let key = new_key(&kms).await;
    kms.rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    kms.create_alias()
        .alias_name("alias/torn")
        .target_key_id(&key)
        .send()
        .await
        .unwrap();
    kms.encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .unwrap();
    let (ok, out) = sidecar.stop();
    assert!(ok, "{}", out.all());

    // A copy of the intact directory starts (and a leftover temp file of an interrupted write is
    // ignored, as documented in docs/data-dir.md).
    let intact = base.path().join("intact");
    copy_dir(&data, &intact);
    std::fs::write(intact.join("keys").join(".x.json.0123.tmp"), b"{\"tor").unwrap();
    let started = Sidecar::start_with(
        &intact,
        Start {
            creds: Some(creds.clone()),
            ..Start::default()
        },
    )
    .unwrap_or_else(|out| panic!("an intact copy did not start:\n{out}"));
    drop(started);

    let files = [
        format!("keys/{key}.json"),
        "aliases.json".to_string(),
        format!("material/{key}.1.key"),
        format!("material/{key}.2.key"),
        "clients.json".to_string(),
        "root.check".to_string(),
        "root.key".to_string(),
        "audit/audit.jsonl".to_string(),
    ];
    let mut checked = 0;
    for file in &files {
        let hows: &[Damage] = match file.as_str() {
            // An empty, zero-patched or cut-at-a-record-boundary audit log is a log that lost
            // history, which only `kms-sidecar audit verify` can tell (docs/audit.md); a torn last
            // record is caught here.
            "audit/audit.jsonl" => &[Damage::TearTail],
            f if f.starts_with("material/") => &[
                Damage::TruncateHalf,
                Damage::Empty,
                Damage::ZeroBlock,
                Damage::Delete,
            ],
            _ => &[Damage::TruncateHalf, Damage::Empty, Damage::ZeroBlock],
        };
        for how in hows {
            let copy = base.path().join(format!("case{checked}"));
            copy_dir(&data, &copy);
            damage(&copy.join(file), *how);
            let result = Sidecar::start_with(
                &copy,
                Start {
                    creds: Some(creds.clone()),
                    ..Start::default()
                },
            );
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            match result {
                Ok(_) => panic!("{file} damaged ({how:?}) and the sidecar started anyway"),
                Err(out) => {
                    let error = out
                        .lines()
                        .find(|l| l.contains("error"))
                        .unwrap_or_default()
                        .to_string();
                    assert!(
                        error.contains(name),
                        "{file} damaged ({how:?}): the error does not name the file:\n{out}"
                    );
                    eprintln!("{file} {how:?}: {error}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 3 + 2 * 4 + 3 * 3 + 1);
}
