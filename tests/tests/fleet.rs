//! A fleet of sidecar processes sharing one key registry in a real 3-member etcd cluster: a data
//! directory imported into etcd, changes propagating within a second, one winner of an alias race,
//! fleet-wide revocation, and etcd losing a member and then its quorum; and a fleet that
//! authenticates to etcd with a user and password; and the sidecar rotating a key killed with
//! SIGKILL mid-rotation, another taking over without losing or duplicating a version; and a fleet
//! on the PKCS#11 backend sharing one (SoftHSM) token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kms_sidecar_e2e::etcd::{self, EtcdCluster};
use kms_sidecar_e2e::{Creds, Sidecar, SoftHsm, Start, binary, http_get, sdk_client};

const ROOT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fleet_args(cluster: &EtcdCluster) -> Vec<String> {
    vec![
        "--registry".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        cluster.endpoints(),
        "--etcd-prefix".into(),
        "/fleet-test/".into(),
        "--maintenance-interval-secs".into(),
        "1".into(),
    ]
}

fn env() -> Vec<(String, String)> {
    vec![("KMS_SIDECAR_ROOT_KEY".into(), ROOT.into())]
}

fn cli(data_dir: &Path, args: &[String]) -> String {
    let out = Command::new(binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("KMS_SIDECAR_ROOT_KEY", ROOT)
        .output()
        .expect("run kms-sidecar");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kms-sidecar {args:?} failed: {text}");
    text
}

/// Polls `f` until it is true, returning how long that took, or panics after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn decrypts(client: &aws_sdk_kms::Client, blob: &[u8], plain: &[u8]) -> bool {
    client
        .decrypt()
        .ciphertext_blob(Blob::new(blob))
        .send()
        .await
        .is_ok_and(|r| r.plaintext().map(|p| p.as_ref()) == Some(plain))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_shares_one_registry_in_etcd() {
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(3);
    let args = fleet_args(&cluster);

    // A single-node sidecar makes a key and a ciphertext, then its data directory moves to etcd.
    let seed_dir = tmp.path().join("seed");
    let seed = Sidecar::start_with(
        &seed_dir,
        Start {
            env: env(),
            ..Default::default()
        },
    )
    .unwrap();
    let creds: Creds = seed.creds.clone();
    let c = seed.sdk();
    let old_key = c
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let old_ct = c
        .encrypt()
        .key_id(&old_key)
        .plaintext(Blob::new(b"from the seed".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    seed.stop();
    let mut import = args.clone();
    import.extend([
        "registry".into(),
        "import".into(),
        "--from".into(),
        seed_dir.display().to_string(),
    ]);
    let out = cli(&tmp.path().join("cli"), &import);
    assert!(out.contains("Imported"), "{out}");

    let start = |n: usize| {
        Sidecar::start_with(
            &tmp.path().join(format!("s{n}")),
            Start {
                args: args.clone(),
                env: env(),
                creds: Some(creds.clone()),
            },
        )
        .unwrap()
    };
    let fleet = [start(1), start(2), start(3)];
    let sdk: Vec<_> = fleet.iter().map(|s| s.sdk()).collect();

    // Every old ciphertext decrypts through the fleet.
    for s in &sdk {
        assert!(decrypts(s, old_ct.as_ref(), b"from the seed").await);
    }

    // A key created on sidecar 1 decrypts on sidecar 3 within a second.
    let key = sdk[0]
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let ct1 = sdk[0]
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"v1".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    let took = within(
        Duration::from_secs(1),
        "key created on 1 usable on 3",
        || decrypts(&sdk[2], ct1.as_ref(), b"v1"),
    )
    .await;
    println!("propagation of CreateKey: {took:?}");

    // A rotation on sidecar 2: every sidecar decrypts both versions.
    within(Duration::from_secs(1), "key visible on 2", || async {
        sdk[1].describe_key().key_id(&key).send().await.is_ok()
    })
    .await;
    sdk[1]
        .rotate_key_on_demand()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    let ct2 = sdk[1]
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"v2".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    for s in &sdk {
        within(
            Duration::from_secs(1),
            "rotated version usable everywhere",
            || decrypts(s, ct2.as_ref(), b"v2"),
        )
        .await;
        assert!(decrypts(s, ct1.as_ref(), b"v1").await);
    }
    let rotations = sdk[2]
        .list_key_rotations()
        .key_id(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rotations.rotations().len(),
        1,
        "exactly one rotation, seen on 3"
    );

    // Concurrent CreateAlias of one name on all sidecars: exactly one winner.
    let mut tasks = Vec::new();
    for round in 0..4 {
        for s in &sdk {
            let s = s.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                s.create_alias()
                    .alias_name(format!("alias/race-{round}"))
                    .target_key_id(key)
                    .send()
                    .await
                    .map_err(|e| {
                        e.into_service_error()
                            .meta()
                            .code()
                            .unwrap_or("")
                            .to_string()
                    })
            }));
        }
    }
    let mut wins = [0; 4];
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(_) => wins[i / 3] += 1,
            Err(code) => assert_eq!(code, "AlreadyExistsException"),
        }
    }
    assert_eq!(wins, [1; 4], "one winner per alias");

    // A revoked credential is refused by every sidecar within a second.
    let mut add = args.clone();
    add.extend(["clients".into(), "add".into(), "app".into()]);
    let out = cli(&tmp.path().join("cli"), &add);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::to_string))
            .unwrap_or_else(|| panic!("{name} not printed: {out}"))
    };
    let app = Creds {
        access_key_id: field("AWS_ACCESS_KEY_ID="),
        secret: field("AWS_SECRET_ACCESS_KEY="),
    };
    let app_clients: Vec<_> = fleet.iter().map(|s| sdk_client(&s.kms_url, &app)).collect();
    for c in &app_clients {
        within(Duration::from_secs(1), "new client accepted", || async {
            c.generate_random().number_of_bytes(8).send().await.is_ok()
        })
        .await;
    }
    let mut revoke = args.clone();
    revoke.extend(["clients".into(), "revoke".into(), app.access_key_id.clone()]);
    cli(&tmp.path().join("cli"), &revoke);
    for c in &app_clients {
        within(Duration::from_secs(1), "revoked client refused", || async {
            c.generate_random().number_of_bytes(8).send().await.is_err()
        })
        .await;
    }

    // One etcd member down: everything works.
    cluster.kill(0);
    for s in &sdk {
        assert!(
            decrypts(s, ct2.as_ref(), b"v2").await,
            "crypto with 2 of 3 members"
        );
    }
    // The etcd client may first try the dead member: a write can fail once, then goes elsewhere.
    let killed = Instant::now();
    let k2 = loop {
        match sdk[0].create_key().send().await {
            Ok(r) => break r.key_metadata.unwrap().key_id,
            Err(e) => {
                let e = e.into_service_error();
                assert_eq!(e.meta().code(), Some("DependencyTimeoutException"), "{e:?}");
                assert!(
                    killed.elapsed() < Duration::from_secs(10),
                    "no write with 2 of 3 members: {e:?}"
                );
            }
        }
    };
    println!(
        "first CreateKey after losing one member took {:?}",
        killed.elapsed()
    );
    within(
        Duration::from_secs(2),
        "key created with 2 of 3 members visible on 2",
        || async { sdk[1].describe_key().key_id(&k2).send().await.is_ok() },
    )
    .await;

    // Two down (no quorum): crypto keeps working, key administration fails clearly, readyz degraded.
    cluster.kill(1);
    for s in &sdk {
        assert!(decrypts(s, ct2.as_ref(), b"v2").await);
        assert!(decrypts(s, old_ct.as_ref(), b"from the seed").await);
    }
    for s in &fleet {
        let url = format!("{}/readyz", s.admin_url);
        within(
            Duration::from_secs(5),
            "readyz says registry degraded",
            || {
                let url = url.clone();
                async move {
                    let (status, body) = http_get(&url).await;
                    status == 200 && body.contains("registry degraded")
                }
            },
        )
        .await;
    }

    let err = sdk[2]
        .create_key()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        err.meta().code(),
        Some("DependencyTimeoutException"),
        "{err:?}"
    );
    assert!(
        err.meta().message().unwrap_or("").contains("registry"),
        "{err:?}"
    );
    // Quorum back: writes work again and every sidecar catches up.
    cluster.restart(0);
    cluster.restart(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let k3 = loop {
        if let Ok(r) = sdk[2].create_key().send().await {
            break r.key_metadata.unwrap().key_id;
        }
        assert!(Instant::now() < deadline, "CreateKey after recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in &sdk {
        within(
            Duration::from_secs(10),
            "catch up after recovery",
            || async { s.describe_key().key_id(&k3).send().await.is_ok() },
        )
        .await;
    }
    for s in &fleet {
        let url = format!("{}/readyz", s.admin_url);
        within(Duration::from_secs(10), "readyz recovers", || {
            let url = url.clone();
            async move { !http_get(&url).await.1.contains("registry degraded") }
        })
        .await;
    }
    let metrics = fleet[0].metrics().await;
    assert!(metrics.contains("kms_sidecar_registry_up 1"), "{metrics}");
    assert!(
        metrics.contains("kms_sidecar_registry_applied_revision "),
        "{metrics}"
    );
}

/// With etcd's authentication on, sidecars log in with `--etcd-user` and the password from the
/// environment: every read, transaction and the watch carry the token (etcd refuses them without
/// it), and a wrong password stops the sidecar at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_authenticates_to_etcd() {
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(1);
    cluster.enable_auth("fleet-secret");
    // Without a token etcd refuses reads: what the sidecars do below needs theirs.
    let refused = Command::new("curl")
        .args(["-sS", "-m", "5", "-X", "POST", "-d", r#"{"key":"Lw=="}"#])
        .arg(format!(
            "{}/v3/kv/range",
            cluster.endpoints().split(',').next().unwrap()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("error"),
        "etcd answered a read without a token: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    let mut args = fleet_args(&cluster);
    args.extend(["--etcd-user".into(), "root".into()]);
    let start = |n: usize, password: &str, creds: Option<Creds>| {
        let mut env = env();
        env.push(("KMS_SIDECAR_ETCD_PASSWORD".into(), password.into()));
        Sidecar::start_with(
            &tmp.path().join(format!("a{n}")),
            Start {
                args: args.clone(),
                env,
                creds,
            },
        )
    };

    let wrong = start(0, "not-the-password", None);
    let Err(out) = wrong else {
        panic!("a sidecar started with a wrong etcd password");
    };
    assert!(out.contains("etcd"), "{out}");

    // The fleet's client credential comes from a data directory imported into etcd, as above.
    let seed_dir = tmp.path().join("seed");
    let seed = Sidecar::start_with(
        &seed_dir,
        Start {
            env: env(),
            ..Default::default()
        },
    )
    .unwrap();
    let creds = seed.creds.clone();
    seed.stop();
    let import = Command::new(binary())
        .arg("--data-dir")
        .arg(tmp.path().join("cli"))
        .args(&args)
        .args(["registry", "import", "--from"])
        .arg(&seed_dir)
        .env("KMS_SIDECAR_ROOT_KEY", ROOT)
        .env("KMS_SIDECAR_ETCD_PASSWORD", "fleet-secret")
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "import: {}",
        String::from_utf8_lossy(&import.stderr)
    );

    let first = start(1, "fleet-secret", Some(creds.clone())).unwrap();
    let second = start(2, "fleet-secret", Some(creds)).unwrap();
    let (a, b) = (first.sdk(), second.sdk());
    let key = a
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let ct = a
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"behind a password".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    // The key reaches the second sidecar through its authenticated watch.
    within(
        Duration::from_secs(2),
        "key created on 1 usable on 2",
        || decrypts(&b, ct.as_ref(), b"behind a password"),
    )
    .await;
    let url = format!("{}/readyz", second.admin_url);
    within(
        Duration::from_secs(3),
        "readyz without registry degraded",
        || {
            let url = url.clone();
            async move { !http_get(&url).await.1.contains("registry degraded") }
        },
    )
    .await;
}

const PREFIX: &str = "/fleet-test/";

/// The value of etcd key `PREFIX + name`, if any, read through etcd's HTTP gateway.
fn etcd_get(cluster: &EtcdCluster, name: &str) -> Option<Vec<u8>> {
    let body = serde_json::json!({ "key": B64.encode(format!("{PREFIX}{name}")) }).to_string();
    let out: serde_json::Value =
        serde_json::from_str(&cluster.gateway("kv/range", &body, None)).unwrap();
    out["kvs"][0]["value"]
        .as_str()
        .map(|v| B64.decode(v).unwrap())
}

/// How many versions key `id`'s record in etcd has.
fn versions_in_etcd(cluster: &EtcdCluster, id: &str) -> usize {
    let rec: serde_json::Value =
        serde_json::from_slice(&etcd_get(cluster, &format!("keys/{id}")).unwrap()).unwrap();
    rec["versions"].as_array().unwrap().len()
}

/// Makes key `id`'s automatic rotation due now, as the passing of its period would: the record's
/// `next_rotation` moves into the past (written straight into etcd; every sidecar's watch sees it).
fn make_rotation_due(cluster: &EtcdCluster, id: &str) {
    let mut rec: serde_json::Value =
        serde_json::from_slice(&etcd_get(cluster, &format!("keys/{id}")).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    rec["next_rotation"] = serde_json::json!(now - 1.0);
    let body = serde_json::json!({
        "key": B64.encode(format!("{PREFIX}keys/{id}")),
        "value": B64.encode(serde_json::to_vec(&rec).unwrap()),
    })
    .to_string();
    cluster.gateway("kv/put", &body, None);
}

/// Automatic rotation in a fleet is elected per key and period by a lease-held lock. The sidecar
/// holding it is killed with SIGKILL as soon as the lock shows up in etcd (its value names the
/// holder's pid): another sidecar takes over once the lease expires (or finds the rotation
/// already published), and the key ends with exactly one new version per period, every version's
/// ciphertexts decrypting on every sidecar. Repeated (restarting the killed sidecar) until a kill
/// landed before the holder published its record, i.e. really mid-rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_killed_mid_rotation_is_taken_over() {
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(3);
    let args = fleet_args(&cluster);

    // The fleet's client credential comes from a data directory imported into etcd.
    let seed_dir = tmp.path().join("seed");
    let seed = Sidecar::start_with(
        &seed_dir,
        Start {
            env: env(),
            ..Default::default()
        },
    )
    .unwrap();
    let creds: Creds = seed.creds.clone();
    seed.stop();
    let mut import = args.clone();
    import.extend([
        "registry".into(),
        "import".into(),
        "--from".into(),
        seed_dir.display().to_string(),
    ]);
    cli(&tmp.path().join("cli"), &import);

    let start = |n: usize| {
        Sidecar::start_with(
            &tmp.path().join(format!("r{n}")),
            Start {
                args: args.clone(),
                env: env(),
                creds: Some(creds.clone()),
            },
        )
        .unwrap()
    };
    let mut fleet: Vec<Sidecar> = (0..3).map(start).collect();
    let key = fleet[0]
        .sdk()
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    fleet[0]
        .sdk()
        .enable_key_rotation()
        .key_id(&key)
        .rotation_period_in_days(90)
        .send()
        .await
        .unwrap();
    let mut cts = vec![(
        fleet[0]
            .sdk()
            .encrypt()
            .key_id(&key)
            .plaintext(Blob::new(b"version 1".to_vec()))
            .send()
            .await
            .unwrap()
            .ciphertext_blob
            .unwrap(),
        b"version 1".to_vec(),
    )];
    for s in &fleet {
        within(Duration::from_secs(2), "key visible everywhere", || async {
            s.sdk().describe_key().key_id(&key).send().await.is_ok()
        })
        .await;
    }

    let lock = format!("locks/rotation/{key}");
    let mut versions = 1;
    let mut mid_rotation = 0;
    for round in 1..=5 {
        // The previous round's lock (a killed holder's lease) is gone first.
        within(
            Duration::from_secs(15),
            "rotation lock released",
            || async { etcd_get(&cluster, &lock).is_none() },
        )
        .await;
        // Catch the elected sidecar taking the lock (etcd's watch pushes the put as it commits)
        // and kill it at once, before it has written its material and record.
        let holder = {
            let mut watch = Command::new("curl")
                .args(["-sSN", "-m", "15", "-X", "POST", "-d"])
                .arg(
                    serde_json::json!({"create_request": {"key": B64.encode(format!("{PREFIX}{lock}"))}})
                        .to_string(),
                )
                .arg(format!("{}/v3/watch", cluster.endpoints().split(',').next().unwrap()))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines =
                std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
            // The watch's creation reply first: only then is the rotation made due.
            lines.next().unwrap().unwrap();
            make_rotation_due(&cluster, &key);
            let holder = lines
                .find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(&l.ok()?).ok()?;
                    let value = v["result"]["events"][0]["kv"]["value"].as_str()?;
                    Some(String::from_utf8(B64.decode(value).unwrap()).unwrap())
                })
                .unwrap_or_else(|| panic!("round {round}: no sidecar took the rotation lock"));
            let pid = holder.rsplit(' ').next().unwrap();
            Command::new("kill").args(["-KILL", pid]).status().unwrap();
            let _ = watch.kill();
            let _ = watch.wait();
            holder
        };
        let pid: u32 = holder
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("lock value names no pid: {holder}"));
        let victim = fleet
            .iter()
            .position(|s| s.pid() == pid)
            .unwrap_or_else(|| panic!("lock held by {holder}, not a fleet member"));
        let published = versions_in_etcd(&cluster, &key) > versions;
        if !published {
            mid_rotation += 1;
        }
        let material = etcd_get(&cluster, &format!("material/{key}/{}", versions + 1)).is_some();
        println!(
            "round {round}: killed sidecar {victim} ({holder}) {} it published the rotation \
             (new version's material {} written)",
            if published { "after" } else { "before" },
            if material { "already" } else { "not yet" }
        );

        // Another sidecar rotates once the dead holder's lease expires: exactly one new version.
        versions += 1;
        let took = within(
            Duration::from_secs(30),
            "rotation taken over by a surviving sidecar",
            || async { versions_in_etcd(&cluster, &key) >= versions },
        )
        .await;
        println!("round {round}: version {versions} in etcd {took:?} after the kill");
        // A few maintenance intervals later still exactly one (no duplicate from the takeover).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(versions_in_etcd(&cluster, &key), versions, "round {round}");
        assert!(
            etcd_get(&cluster, &format!("material/{key}/{}", versions + 1)).is_none(),
            "round {round}: material made for a version that was never published"
        );

        // The killed sidecar comes back; every sidecar lists the same rotations and decrypts
        // every version's ciphertext.
        fleet[victim] = start(victim);
        let plain = format!("version {versions}").into_bytes();
        let ct = fleet[victim]
            .sdk()
            .encrypt()
            .key_id(&key)
            .plaintext(Blob::new(plain.clone()))
            .send()
            .await
            .unwrap()
            .ciphertext_blob
            .unwrap();
        cts.push((ct, plain));
        for s in &fleet {
            let c = s.sdk();
            let listed = c
                .list_key_rotations()
                .key_id(&key)
                .send()
                .await
                .unwrap()
                .rotations()
                .len();
            assert_eq!(listed + 1, versions, "round {round}: ListKeyRotations");
            for (ct, plain) in &cts {
                assert!(decrypts(&c, ct.as_ref(), plain).await, "round {round}");
            }
        }
        if mid_rotation > 0 && round >= 2 {
            break;
        }
    }
    println!("{mid_rotation} kill(s) landed mid-rotation");
    assert!(
        mid_rotation > 0,
        "no kill landed before the holder published its rotation in 5 rounds"
    );
}

/// Two sidecars on the PKCS#11 backend share one token (one SoftHSM token directory, as two pods
/// would share one HSM) and the etcd registry: a key created on one encrypts there and decrypts on
/// the other, and a version made by a rotation on one is usable on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pkcs11_fleet_shares_one_token() {
    if !etcd::available() {
        println!("SKIPPED: etcd is not installed (scripts/test.sh installs etcd-server)");
        return;
    }
    let Some(token) = SoftHsm::new("pkcs11_fleet") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(1);
    let mut args = fleet_args(&cluster);
    args.extend(token.start().args);
    let mut env = env();
    env.extend(token.start().env);

    // The fleet's client credential comes from a data directory imported into etcd.
    let seed_dir = tmp.path().join("seed");
    let seed = Sidecar::start_with(
        &seed_dir,
        Start {
            env: self::env(),
            ..Default::default()
        },
    )
    .unwrap();
    let creds = seed.creds.clone();
    seed.stop();
    let mut import = fleet_args(&cluster);
    import.extend([
        "registry".into(),
        "import".into(),
        "--from".into(),
        seed_dir.display().to_string(),
    ]);
    cli(&tmp.path().join("cli"), &import);

    let start = |n: usize| {
        Sidecar::start_with(
            &tmp.path().join(format!("p{n}")),
            Start {
                args: args.clone(),
                env: env.clone(),
                creds: Some(creds.clone()),
            },
        )
        .unwrap()
    };
    let (one, two) = (start(1), start(2));
    let (a, b) = (one.sdk(), two.sdk());
    let key = a
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let ct1 = a
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"made on one".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    within(
        Duration::from_secs(2),
        "key created on 1 decrypts on 2",
        || decrypts(&b, ct1.as_ref(), b"made on one"),
    )
    .await;

    // A rotation on the second: its new version (a new token object) is used on the first.
    b.rotate_key_on_demand().key_id(&key).send().await.unwrap();
    let ct2 = b
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"version 2 on two".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    within(
        Duration::from_secs(2),
        "rotated version made on 2 decrypts on 1",
        || decrypts(&a, ct2.as_ref(), b"version 2 on two"),
    )
    .await;
    let ct3 = a
        .encrypt()
        .key_id(&key)
        .plaintext(Blob::new(b"version 2 on one".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    assert!(decrypts(&b, ct3.as_ref(), b"version 2 on one").await);
    assert!(decrypts(&b, ct1.as_ref(), b"made on one").await);
    assert_eq!(
        a.list_key_rotations()
            .key_id(&key)
            .send()
            .await
            .unwrap()
            .rotations()
            .len(),
        1
    );
}
