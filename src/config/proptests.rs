//! Property tests: any value, any environment bytes: a configuration or problems, never a
//! panic, and never a secret in a problem.

use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use proptest::prelude::*;

use super::{values::*, *};

/// Text that looks like a setting often enough to reach past the first check: URL parts,
/// digits, units, separators, and now and then anything at all.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:/@.%?&=#,_\\[\\] -]{0,40}",
        "(amqps?|https?|redis)://[a-z0-9:@.%/?&=_\\[\\]-]{0,30}",
        "[0-9]{1,25}(ms|s|m|h|d|KiB|MiB|mb|b|GiB)?",
        any::<String>(),
    ]
}

/// A secret no problem text can contain by chance: 16 upper-case letters.
fn secret() -> impl Strategy<Value = String> {
    "[A-Z]{16}"
}

/// Ways a secret sits in the value of a setting that may hold one.
fn secret_value() -> impl Strategy<Value = (String, String)> {
    let templates = prop_oneof![
        Just("{}"),
        Just("amqp:{}"),
        Just("amqp://{}"),
        Just("amqp://u:{}@host:99999/vh"),
        Just("amqp://u:{}@host/vh?heartbeat=x"),
        Just("amqp://host/vh?auth_mechanism={}"),
        Just("amqp://u:{}@[::1/"),
        Just("amqp://a/%2f,http://u:{}@b"),
        Just("http://u:{}@rabbit"),
        Just("redis://:{}@/0"),
        Just("redis://:{}@host/db"),
        Just("redis://host/?protocol={}"),
        Just("redis://u:{}@host:99999"),
        Just("{} with spaces"),
    ];
    (templates, secret(), value()).prop_map(|(template, secret, noise)| {
        let value = format!("{}{noise}", template.replace("{}", &secret));
        (secret, value)
    })
}

/// Any bytes, UTF-8 or not.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        "[ -~]{0,24}".prop_map(String::into_bytes),
    ]
}

/// A variable name: a setting's, telemetry's, another causeway one, or anything.
fn name() -> impl Strategy<Value = Vec<u8>> {
    let setting = proptest::sample::select(KEYS)
        .prop_map(|key| format!("{PREFIX}{}", key.to_ascii_uppercase()).into_bytes());
    prop_oneof![
        setting,
        Just(b"RUST_LOG".to_vec()),
        Just(b"OTEL_SERVICE_NAME".to_vec()),
        Just(b"CAUSEWAY_CONFIG".to_vec()),
        "CAUSEWAY_[A-Z_]{1,12}".prop_map(String::into_bytes),
        bytes(),
    ]
}

fn is_read(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let setting = name
        .strip_prefix(PREFIX)
        .is_some_and(|rest| KEYS.iter().any(|key| key.to_ascii_uppercase() == rest));
    setting || name.starts_with("OTEL_") || name == "RUST_LOG"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_value_parser_answers_without_panicking(value in value()) {
        let _ = parse_name(&value, 200);
        let _ = parse_broker_name(&value);
        let _ = parse_addr(&value);
        let _ = parse_amqp_urls(&value);
        let _ = parse_redis_url(&value);
        let _ = parse_path(&value);
        let _ = parse_token(&value);
        let _ = parse_size(&value);
        let _ = parse_duration(&value);
        let _ = parse_count(&value, 64);
        let _ = parse_bool(&value);
        let _ = parse_log_format(&value);
        let _ = AppUrl::parse(&value);
        let _ = without_credentials(&value);
    }

    #[test]
    fn a_secret_setting_never_shows_its_value((secret, value) in secret_value()) {
        for key in SECRET_KEYS {
            let var = format!("{PREFIX}{}", key.to_ascii_uppercase());
            let env = HashMap::from([
                ("CAUSEWAY_SERVICE".to_owned(), "orders".to_owned()),
                (var, value.clone()),
            ]);
            if let Err(error) = Config::load(None, &env) {
                let text = error.to_string();
                prop_assert!(!text.contains(&secret), "{key}: {text}");
            }
        }
    }

    #[test]
    fn an_app_url_never_shows_its_credentials(
        secret in secret(),
        before in "[a-z0-9:/.]{0,12}",
        after in "[a-z0-9:/.@?#]{0,16}",
    ) {
        let value = format!("http://{before}u:{secret}@{after}");
        let env = HashMap::from([
            ("CAUSEWAY_SERVICE".to_owned(), "orders".to_owned()),
            ("CAUSEWAY_APP_URL".to_owned(), value.clone()),
        ]);
        let error = Config::load(None, &env).unwrap_err();
        let text = error.to_string();
        prop_assert!(!text.contains(&secret), "{value}: {text}");
        prop_assert!(!without_credentials(&value).contains(&secret));
    }

    #[test]
    fn any_environment_gives_a_configuration_or_problems_naming_unreadable_variables(
        vars in proptest::collection::vec((name(), bytes()), 0..12),
        secret in secret(),
    ) {
        let mut environment: Vec<(OsString, OsString)> =
            vec![(OsString::from("CAUSEWAY_SERVICE"), OsString::from("orders"))];
        let mut unreadable = Vec::new();
        for (name, mut value) in vars {
            // A value that is not UTF-8 carries the secret, to see that it is never shown
            // (but for the config file's path, which is shown when the file cannot be read).
            if std::str::from_utf8(&value).is_err() && name != b"CAUSEWAY_CONFIG" {
                value.extend_from_slice(secret.as_bytes());
                if is_read(&name) {
                    unreadable.push(String::from_utf8_lossy(&name).into_owned());
                }
            }
            environment.push((OsString::from_vec(name), OsString::from_vec(value)));
        }
        match Config::from_vars(None, environment) {
            Ok(_) => prop_assert!(unreadable.is_empty(), "{unreadable:?} were accepted"),
            Err(error) => {
                let text = error.to_string();
                prop_assert!(!text.contains(&secret), "{text}");
                for name in &unreadable {
                    prop_assert!(text.contains(name.as_str()), "{name} not named: {text}");
                }
            }
        }
    }

    #[test]
    fn unrelated_variables_never_matter(
        vars in proptest::collection::vec(("[A-Z][A-Z0-9_]{0,12}", bytes()), 0..12),
    ) {
        let mut environment: Vec<(OsString, OsString)> =
            vec![(OsString::from("CAUSEWAY_SERVICE"), OsString::from("orders"))];
        for (name, value) in vars {
            if name.starts_with("CAUSEWAY_") || name.starts_with("OTEL_") || name == "RUST_LOG" {
                continue;
            }
            environment.push((OsString::from(name), OsString::from_vec(value)));
        }
        let config = Config::from_vars(None, environment);
        prop_assert!(config.is_ok(), "{:?}", config.err());
    }
}
