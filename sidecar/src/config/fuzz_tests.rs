//! Fuzzing the configuration loader (issue 11; `docs/hardening.md`): TOML files and command lines
//! built from the real option names with values of every type and size, and byte-level mutations of
//! a valid file. Whatever the input, loading returns a `Config` or an error; it never panics or
//! hangs, and an accepted configuration keeps its invariants (loopback defaults, bounded body).

use std::io::Write as _;

use clap::{CommandFactory, Parser};
use proptest::prelude::*;

use super::*;
use crate::fuzz_support as fuzz;

/// Every long flag of the command line (the same names, snake_case, are the file's keys).
fn flag_names() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .filter(|n| n != "help" && n != "version")
        .collect()
}

/// TOML value literals of every type, including out-of-range and non-finite numbers.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(65_536), Just(i64::MAX)]
            .prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        prop_oneof![
            Just("nan"),
            Just("inf"),
            Just("-inf"),
            Just("-0.0"),
            Just("1e308")
        ]
        .prop_map(str::to_owned),
        any::<bool>().prop_map(|v| v.to_string()),
        "[ -~]{0,24}".prop_map(|s| toml_string(&s)),
        prop_oneof![
            Just("127.0.0.1:0"),
            Just("[::1]:7300"),
            Just("us-east-1"),
            Just("123456789012"),
            Just("embedded"),
            Just("pkcs11"),
            Just("json"),
            Just("debug,hyper=off"),
            Just("[{a=/x/}]"),
        ]
        .prop_map(toml_string),
        prop::collection::vec("[a-z]{0,6}", 0..4).prop_map(|v| format!(
            "[{}]",
            v.iter()
                .map(|s| toml_string(s))
                .collect::<Vec<_>>()
                .join(",")
        )),
        prop::collection::btree_map("[a-z]{1,6}", -10.0f64..1e6, 0..4).prop_map(|m| format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k} = {v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ]
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A config file: known keys (and a few unknown ones) with arbitrary values, or noise.
fn toml_file(names: Vec<String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        8 => prop::sample::select(names).prop_map(|n| n.replace('-', "_")),
        1 => Just("rate_limit_principals".to_owned()),
        1 => "[a-z_]{1,12}",
    ];
    prop_oneof![
        6 => prop::collection::vec((key, toml_value()), 0..12).prop_map(|kv| {
            kv.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>()
        }),
        1 => ".{0,200}",
        1 => prop::collection::vec(any::<prop::sample::Index>(), 1..6).prop_map(|cuts| {
            // A valid file with lines dropped and bytes cut: a half-written or hand-mangled file.
            let valid = "listen = \"127.0.0.1:7300\"\nregion = \"eu-west-1\"\nrate_limit_global = 100.0\n\
                         cache_ttl_secs = 60\n[rate_limit_principals]\napp = 5.0\n";
            let mut s = valid.to_owned();
            for c in cuts {
                let at = c.index(s.len() + 1);
                if s.is_char_boundary(at) {
                    s.replace_range(at..(at + 3).min(s.len()), "");
                }
            }
            s
        }),
    ]
}

/// A command line: flags with values of every shape, sometimes missing or repeated.
fn command_line(names: Vec<String>) -> impl Strategy<Value = Vec<String>> {
    let value = prop_oneof![
        toml_value().prop_map(|v| v.trim_matches('"').to_owned()),
        Just(String::new()),
        Just("--".to_owned()),
        ".{0,30}",
    ];
    let flag = (prop::sample::select(names), prop::option::of(value));
    prop::collection::vec(flag, 0..8).prop_map(|flags| {
        let mut args = vec!["kms-sidecar".to_owned()];
        for (name, value) in flags {
            // A random --config path could name a device that never ends; the file cases cover it.
            if name == "config" {
                continue;
            }
            args.push(format!("--{name}"));
            args.extend(value);
        }
        args
    })
}

fn secrets() -> impl Strategy<Value = Secrets> {
    let value = prop_oneof![Just("11".repeat(32)), "[0-9a-fA-F]{0,70}", ".{0,20}"];
    (
        prop::option::of(value.clone()),
        prop::option::of(value.clone()),
        prop::option::of(value.clone()),
        prop::option::of(value),
    )
        .prop_map(
            |(root_key, pkcs11_pin, admin_token, upstream_secret)| Secrets {
                root_key,
                pkcs11_pin,
                admin_token,
                upstream_secret,
            },
        )
}

/// What every accepted configuration must satisfy, whatever the input.
fn invariants(c: &Config) -> Result<(), TestCaseError> {
    prop_assert!((1024..=1_048_576).contains(&c.max_body_bytes()));
    prop_assert!(c.listen().port() == 0 || c.listen() != c.admin_listen());
    prop_assert!(c.max_clock_skew() >= Duration::from_secs(1));
    prop_assert!(c.pool().low_watermark <= c.pool().size);
    Ok(())
}

#[test]
fn config_files_and_flags() {
    let names = flag_names();
    assert!(names.len() > 40, "{names:?}");
    let dog = fuzz::Watchdog::new("config_files_and_flags", Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.toml");
    let case = (
        toml_file(names.clone()),
        command_line(names),
        secrets(),
        any::<bool>(),
    );
    proptest!(fuzz::config(2000), |((file, args, secrets, via_file) in case)| {
        let _case = dog.case();
        let cli = match Cli::try_parse_from(&args) {
            Ok(cli) => cli.options,
            Err(_) => Options::default(),
        };
        let loaded = if via_file {
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(file.as_bytes()).unwrap();
            drop(f);
            Config::load(&Options { config: Some(path.clone()), ..cli }, secrets)
        } else {
            match toml::from_str::<Options>(&file) {
                Ok(parsed) => Config::merge(cli, parsed, secrets),
                Err(e) => Err(e.into()),
            }
        };
        if let Ok(c) = loaded {
            invariants(&c)?;
        }
    });
}

#[test]
fn config_file_reading_is_bounded() {
    // A config path that names an endless device must not read forever.
    if std::path::Path::new("/dev/zero").exists() {
        let started = std::time::Instant::now();
        let cli = Options {
            config: Some("/dev/zero".into()),
            ..Options::default()
        };
        let err = Config::load(&cli, Secrets::default()).unwrap_err();
        assert!(format!("{err:#}").contains("/dev/zero"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
