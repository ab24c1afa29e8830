//! Unit tests of configuration merging and validation (flags over environment over file over
//! defaults, and every rejected value).

use super::*;
use clap::Parser;

fn file(text: &str) -> anyhow::Result<Options> {
    Ok(toml::from_str(text)?)
}

#[test]
fn defaults_bind_loopback() {
    let c = Config::merge(Options::default(), Options::default(), Secrets::default()).unwrap();
    assert_eq!(c.listen(), "127.0.0.1:7300".parse().unwrap());
    assert_eq!(c.admin_listen(), "127.0.0.1:7301".parse().unwrap());
    assert_eq!(c.max_body_bytes(), 65_536);
    assert_eq!(c.max_clock_skew(), Duration::from_secs(300));
    assert!(matches!(c.root_key(), RootKeySource::DataDir));
    assert_eq!(c.arn_scope().region, "us-east-1");
}

#[test]
fn tls_and_admin_token_settings() {
    let merge = |f: &str| Config::merge(Options::default(), file(f).unwrap(), Secrets::default());
    let c = merge("").unwrap();
    assert_eq!(c.tls(), None);
    assert_eq!(c.admin_token(), None);
    assert_eq!(
        merge("tls = true").unwrap().tls(),
        Some(&TlsSource::SelfSigned)
    );
    assert_eq!(
        merge("tls = true\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"")
            .unwrap()
            .tls(),
        Some(&TlsSource::Files {
            cert: "/c.pem".into(),
            key: "/k.pem".into()
        })
    );
    for bad in [
        "tls = true\ntls_cert = \"/c.pem\"",
        "tls_cert = \"/c\"\ntls_key = \"/k\"",
    ] {
        assert!(merge(bad).is_err(), "{bad}");
    }
    let secrets = Secrets {
        admin_token: Some("an-admin-token-of-length".into()),
        ..Secrets::default()
    };
    let c = Config::merge(Options::default(), Options::default(), secrets).unwrap();
    assert_eq!(
        c.admin_token(),
        Some(&AdminToken::new("an-admin-token-of-length").unwrap())
    );
    let short = Secrets {
        admin_token: Some("short".into()),
        ..Secrets::default()
    };
    let err = Config::merge(Options::default(), Options::default(), short).unwrap_err();
    assert!(format!("{err:#}").contains(ADMIN_TOKEN_ENV), "{err:#}");
}

#[test]
fn flag_beats_file_beats_default() {
    let f = file("region = \"eu-west-1\"\naccount_id = \"123456789012\"\n").unwrap();
    let cli = Options {
        region: Some("ap-south-2".into()),
        ..Options::default()
    };
    let c = Config::merge(cli, f, Secrets::default()).unwrap();
    assert_eq!(c.region, Region("ap-south-2".into()));
    assert_eq!(c.account_id, AccountId("123456789012".into()));
}

#[test]
fn rejects_unknown_fields_and_bad_values() {
    let err = file("lisen = \"127.0.0.1:1\"").unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    let bad = [
        Options {
            region: Some("Mars".into()),
            ..Options::default()
        },
        Options {
            account_id: Some("12".into()),
            ..Options::default()
        },
        Options {
            listen: Some("nowhere".into()),
            ..Options::default()
        },
        Options {
            max_body_bytes: Some(10),
            ..Options::default()
        },
        Options {
            max_clock_skew_secs: Some(0),
            ..Options::default()
        },
        Options {
            maintenance_interval_secs: Some(0),
            ..Options::default()
        },
        Options {
            log_level: Some("=[".into()),
            ..Options::default()
        },
        Options {
            listen: Some("127.0.0.1:5000".into()),
            admin_listen: Some("127.0.0.1:5000".into()),
            ..Options::default()
        },
    ];
    for cli in bad {
        let dbg = format!("{cli:?}");
        assert!(
            Config::merge(cli, Options::default(), Secrets::default()).is_err(),
            "{dbg}"
        );
    }
}

#[test]
fn root_key_precedence() {
    let cli = Options {
        root_key_file: Some("/k".into()),
        ..Options::default()
    };
    let c = Config::merge(
        cli.clone(),
        Options::default(),
        Secrets {
            root_key: Some("00".repeat(32)),
            ..Secrets::default()
        },
    )
    .unwrap();
    assert!(matches!(c.root_key(), RootKeySource::Hex(_)));
    assert!(
        !format!("{:?}", c.root_key()).contains("0000"),
        "root key leaked in Debug"
    );
    let c = Config::merge(cli, Options::default(), Secrets::default()).unwrap();
    assert!(matches!(c.root_key(), RootKeySource::File(_)));
}

#[test]
fn upstream_backend_settings() {
    let secrets = || Secrets {
        upstream_secret: Some("upstream-very-secret".into()),
        ..Secrets::default()
    };
    let f = file(
        "backend = \"upstream\"\nupstream_endpoint = \"https://kms.eu-west-1.amazonaws.com\"\n\
         upstream_access_key_id = \"AKIAFILE\"\nregion = \"eu-west-1\"\nbackend_timeout_ms = 1500\n",
    )
    .unwrap();
    let c = Config::merge(Options::default(), f.clone(), secrets()).unwrap();
    let BackendConfig::Upstream(s) = &c.backend() else {
        panic!("{:?}", c.backend())
    };
    assert_eq!(
        s.endpoint.as_deref(),
        Some("https://kms.eu-west-1.amazonaws.com")
    );
    assert_eq!(s.region, "eu-west-1", "defaults to the sidecar's region");
    assert_eq!(s.access_key_id, "AKIAFILE");
    assert_eq!(s.alias_prefix, DEFAULT_UPSTREAM_ALIAS_PREFIX);
    assert_eq!(s.timeout, Duration::from_millis(1500));
    let shown = format!("{c:?}");
    assert!(!shown.contains("upstream-very-secret"), "{shown}");

    // The secret from a file, flags over the file.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "from-file\n").unwrap();
    let cli = Options {
        upstream_secret_access_key_file: Some(secret_file),
        upstream_region: Some("us-west-2".into()),
        upstream_alias_prefix: Some("team-a/prod".into()),
        ..Options::default()
    };
    let c = Config::merge(cli, f.clone(), Secrets::default()).unwrap();
    let BackendConfig::Upstream(s) = &c.backend() else {
        panic!()
    };
    use secrecy::ExposeSecret as _;
    assert_eq!(s.secret_access_key.expose_secret(), "from-file");
    assert_eq!(
        (s.region.as_str(), s.alias_prefix.as_str()),
        ("us-west-2", "team-a/prod")
    );

    // Each bad setting is refused with a message naming it.
    let bad = [
        (
            Options {
                upstream_endpoint: Some("kms.example.com".into()),
                ..Options::default()
            },
            "upstream_endpoint",
        ),
        (
            Options {
                upstream_endpoint: Some("http://kms.example.com".into()),
                ..Options::default()
            },
            "unencrypted",
        ),
        (
            Options {
                upstream_region: Some("Mars".into()),
                ..Options::default()
            },
            "upstream_region",
        ),
        (
            Options {
                upstream_alias_prefix: Some("aws/x".into()),
                ..Options::default()
            },
            "upstream_alias_prefix",
        ),
    ];
    for (cli, says) in bad {
        let err = format!(
            "{:#}",
            Config::merge(cli, f.clone(), secrets()).unwrap_err()
        );
        assert!(err.contains(says), "{says}: {err}");
    }
    let err = Config::merge(Options::default(), f.clone(), Secrets::default()).unwrap_err();
    assert!(format!("{err:#}").contains(UPSTREAM_SECRET_ENV), "{err:#}");
    let no_id = file("backend = \"upstream\"").unwrap();
    let err = Config::merge(Options::default(), no_id, secrets()).unwrap_err();
    assert!(
        format!("{err:#}").contains("upstream_access_key_id"),
        "{err:#}"
    );
}

#[test]
fn cli_parses() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "kms-sidecar",
        "clients",
        "add",
        "app",
        "--data-dir",
        "/tmp/x",
    ])
    .unwrap();
    assert!(matches!(
        cli.command,
        Some(Command::Clients {
            command: ClientsCommand::Add { .. }
        })
    ));
    assert_eq!(cli.options.data_dir, Some(PathBuf::from("/tmp/x")));
    for (args, enabled) in [
        (&["kms-sidecar"][..], false),
        (&["kms-sidecar", "--faults-enabled"][..], true),
        (&["kms-sidecar", "--faults-enabled", "false"][..], false),
    ] {
        let cli = Cli::try_parse_from(args).unwrap();
        let c = Config::merge(cli.options, Options::default(), Secrets::default()).unwrap();
        assert_eq!(c.faults_enabled(), enabled, "{args:?}");
    }
    let c = Config::merge(
        Options::default(),
        file("faults_enabled = true").unwrap(),
        Secrets::default(),
    )
    .unwrap();
    assert!(c.faults_enabled());
}
