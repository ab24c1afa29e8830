//! A fleet of sidecar processes sharing one key registry in a real 3-member etcd cluster: a data
//! directory imported into etcd, changes propagating within a second, one winner of an alias race,
//! fleet-wide revocation, and etcd losing a member and then its quorum; and a fleet that
//! authenticates to etcd with a user and password; and the sidecar rotating a key killed with
//! SIGKILL mid-rotation, another taking over without losing or duplicating a version; and a fleet
//! on the PKCS#11 backend sharing one (SoftHSM) token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kms_sidecar_e2e::etcd::EtcdCluster;
use kms_sidecar_e2e::fleet::{Fleet, decrypts, within};
use kms_sidecar_e2e::{Sidecar, SoftHsm, encrypt, http_get, new_key, sdk_client};

const PREFIX: &str = "/fleet-test/";

/// A fleet of `members` etcd members under [`PREFIX`] whose sidecars run maintenance (rotation)
/// every second; `None` where etcd is not installed (the test prints SKIPPED).
fn fleet(members: usize) -> Option<Fleet> {
    let mut fleet = Fleet::start_or_skip(members, PREFIX)?;
    fleet
        .args
        .extend(["--maintenance-interval-secs".into(), "1".into()]);
    Some(fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_shares_one_registry_in_etcd() {
    let Some(mut fleet) = fleet(3) else { return };

    // A single-node sidecar makes a key and a ciphertext, then its data directory moves to etcd.
    let seed = fleet.seed();
    let creds = seed.creds.clone();
    let c = seed.sdk();
    let old_key = new_key(&c).await;
    let old_ct = encrypt(&c, &old_key, b"from the seed").await;
    seed.stop();
    let out = fleet.import_seed();
    assert!(out.contains("Imported"), "{out}");

    let members = [
        fleet.member("s1", &creds),
        fleet.member("s2", &creds),
        fleet.member("s3", &creds),
    ];
    let sdk: Vec<_> = members.iter().map(|s| s.sdk()).collect();

    // Every old ciphertext decrypts through the fleet.
    for s in &sdk {
        assert!(decrypts(s, old_ct.as_ref(), b"from the seed").await);
    }

    // A key created on sidecar 1 decrypts on sidecar 3 within a second.
    let key = new_key(&sdk[0]).await;
    let ct1 = encrypt(&sdk[0], &key, b"v1").await;
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
    let ct2 = encrypt(&sdk[1], &key, b"v2").await;
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
    let app = fleet.add_client("app");
    let app_clients: Vec<_> = members
        .iter()
        .map(|s| sdk_client(&s.kms_url, &app))
        .collect();
    for c in &app_clients {
        within(Duration::from_secs(1), "new client accepted", || async {
            c.generate_random().number_of_bytes(8).send().await.is_ok()
        })
        .await;
    }
    fleet.cli_ok(&["clients", "revoke", &app.access_key_id]);
    for c in &app_clients {
        within(Duration::from_secs(1), "revoked client refused", || async {
            c.generate_random().number_of_bytes(8).send().await.is_err()
        })
        .await;
    }

    // One etcd member down: everything works.
    fleet.cluster.kill(0);
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
    fleet.cluster.kill(1);
    for s in &sdk {
        assert!(decrypts(s, ct2.as_ref(), b"v2").await);
        assert!(decrypts(s, old_ct.as_ref(), b"from the seed").await);
    }
    for s in &members {
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
    fleet.cluster.restart(0);
    fleet.cluster.restart(1);
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
    for s in &members {
        let url = format!("{}/readyz", s.admin_url);
        within(Duration::from_secs(10), "readyz recovers", || {
            let url = url.clone();
            async move { !http_get(&url).await.1.contains("registry degraded") }
        })
        .await;
    }
    let metrics = members[0].metrics().await;
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
    let Some(mut fleet) = fleet(1) else { return };
    fleet.cluster.enable_auth("fleet-secret");
    // Without a token etcd refuses reads: what the sidecars do below needs theirs.
    let refused = Command::new("curl")
        .args(["-sS", "-m", "5", "-X", "POST", "-d", r#"{"key":"Lw=="}"#])
        .arg(format!(
            "{}/v3/kv/range",
            fleet.cluster.endpoints().split(',').next().unwrap()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("error"),
        "etcd answered a read without a token: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    fleet.args.extend(["--etcd-user".into(), "root".into()]);
    let password = |p: &str| ("KMS_SIDECAR_ETCD_PASSWORD".to_string(), p.to_string());

    fleet.env.push(password("not-the-password"));
    let wrong = fleet.try_member("a0", None);
    let Err(out) = wrong else {
        panic!("a sidecar started with a wrong etcd password");
    };
    assert!(out.contains("etcd"), "{out}");

    // The fleet's client credential comes from a data directory imported into etcd, as above
    // (the import logs in with the right password).
    fleet.env.pop();
    fleet.env.push(password("fleet-secret"));
    let creds = fleet.seeded_creds();

    let first = fleet.member("a1", &creds);
    let second = fleet.member("a2", &creds);
    let (a, b) = (first.sdk(), second.sdk());
    let key = new_key(&a).await;
    let ct = encrypt(&a, &key, b"behind a password").await;
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
    let Some(fleet) = fleet(3) else { return };
    let cluster = &fleet.cluster;

    // The fleet's client credential comes from a data directory imported into etcd.
    let creds = fleet.seeded_creds();
    let start = |n: usize| fleet.member(&format!("r{n}"), &creds);
    let mut members: Vec<Sidecar> = (0..3).map(start).collect();
    let key = new_key(&members[0].sdk()).await;
    members[0]
        .sdk()
        .enable_key_rotation()
        .key_id(&key)
        .rotation_period_in_days(90)
        .send()
        .await
        .unwrap();
    let mut cts = vec![(
        encrypt(&members[0].sdk(), &key, b"version 1").await,
        b"version 1".to_vec(),
    )];
    for s in &members {
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
            || async { etcd_get(cluster, &lock).is_none() },
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
            make_rotation_due(cluster, &key);
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
        let victim = members
            .iter()
            .position(|s| s.pid() == pid)
            .unwrap_or_else(|| panic!("lock held by {holder}, not a fleet member"));
        let published = versions_in_etcd(cluster, &key) > versions;
        if !published {
            mid_rotation += 1;
        }
        let material = etcd_get(cluster, &format!("material/{key}/{}", versions + 1)).is_some();
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
            || async { versions_in_etcd(cluster, &key) >= versions },
        )
        .await;
        println!("round {round}: version {versions} in etcd {took:?} after the kill");
        // A few maintenance intervals later still exactly one (no duplicate from the takeover).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(versions_in_etcd(cluster, &key), versions, "round {round}");
        assert!(
            etcd_get(cluster, &format!("material/{key}/{}", versions + 1)).is_none(),
            "round {round}: material made for a version that was never published"
        );

        // The killed sidecar comes back; every sidecar lists the same rotations and decrypts
        // every version's ciphertext.
        members[victim] = start(victim);
        let plain = format!("version {versions}").into_bytes();
        let ct = encrypt(&members[victim].sdk(), &key, &plain).await;
        cts.push((ct, plain));
        for s in &members {
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
    let Some(mut fleet) = fleet(1) else { return };
    let Some(token) = SoftHsm::new("pkcs11_fleet") else {
        return;
    };

    // The fleet's client credential comes from a data directory imported into etcd (the import
    // needs no token); the members then share the token.
    let creds = fleet.seeded_creds();
    fleet.args.extend(token.start().args);
    fleet.env.extend(token.start().env);
    let (one, two) = (fleet.member("p1", &creds), fleet.member("p2", &creds));
    let (a, b) = (one.sdk(), two.sdk());
    let key = new_key(&a).await;
    let ct1 = encrypt(&a, &key, b"made on one").await;
    within(
        Duration::from_secs(2),
        "key created on 1 decrypts on 2",
        || decrypts(&b, ct1.as_ref(), b"made on one"),
    )
    .await;

    // A rotation on the second: its new version (a new token object) is used on the first.
    b.rotate_key_on_demand().key_id(&key).send().await.unwrap();
    let ct2 = encrypt(&b, &key, b"version 2 on two").await;
    within(
        Duration::from_secs(2),
        "rotated version made on 2 decrypts on 1",
        || decrypts(&a, ct2.as_ref(), b"version 2 on two"),
    )
    .await;
    let ct3 = encrypt(&a, &key, b"version 2 on one").await;
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
