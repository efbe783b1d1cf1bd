use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn origins(error: &ConfigError) -> Vec<&str> {
    error.0.iter().map(|i| i.origin.as_str()).collect()
}

#[test]
fn defaults_apply_when_only_the_service_is_set() {
    let config = Config::load(None, &env(&[("CAUSEWAY_SERVICE", "orders")])).unwrap();
    assert_eq!(config.service, "orders");
    assert_eq!(config.api_addr, "127.0.0.1:7070".parse().unwrap());
    assert_eq!(config.admin_addr, "0.0.0.0:7071".parse().unwrap());
    assert_eq!(config.broker.exchange, "causeway.events");
    assert_eq!(config.broker.unrouted, "causeway.unrouted");
    assert_eq!(
        config.broker.urls,
        ["amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&frame_max=16384"]
    );
    assert_eq!(config.max_body, 1024 * 1024);
    assert_eq!(config.dedup_retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.api_token, None);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.worker_threads, cores.min(2));
}

#[test]
fn every_invalid_variable_is_named_at_once() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_API_ADDR", "nowhere"),
            ("CAUSEWAY_MAX_BODY", "lots"),
            ("CAUSEWAY_AMQP_URL", "http://broker"),
            ("CAUSEWAY_CONFIRM_TIMEOUT", "0s"),
            ("CAUSEWAY_WORKER_THREADS", "0"),
            ("CAUSEWAY_LOG_FORMAT", "xml"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        [
            "CAUSEWAY_SERVICE",
            "CAUSEWAY_API_ADDR",
            "CAUSEWAY_AMQP_URL",
            "CAUSEWAY_MAX_BODY",
            "CAUSEWAY_CONFIRM_TIMEOUT",
            "CAUSEWAY_LOG_FORMAT",
            "CAUSEWAY_WORKER_THREADS",
        ]
    );
    let text = error.to_string();
    assert!(
        text.contains("CAUSEWAY_SERVICE: required but not set"),
        "{text}"
    );
    assert!(text.contains("\"lots\""), "{text}");
}

#[test]
fn sizes_and_durations_take_units() {
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("2mb"), Ok(2 * 1024 * 1024));
    assert_eq!(parse_size("100"), Ok(100));
    assert!(parse_size("0").is_err());
    assert!(parse_size("1GiB").is_err());
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
}

#[test]
fn explicit_heartbeat_and_frame_max_are_kept() {
    assert_eq!(
        parse_amqp_url("amqp://u:p@host:5672/vh?heartbeat=30").unwrap(),
        "amqp://u:p@host:5672/vh?heartbeat=30&frame_max=16384"
    );
    assert_eq!(
        parse_amqp_url("amqps://host/vh?frame_max=8192").unwrap(),
        "amqps://host/vh?frame_max=8192&heartbeat=10"
    );
}

#[test]
fn an_address_list_names_each_node_and_a_bad_entry_by_its_place() {
    let urls = parse_amqp_urls(
        "amqp://u:p@rabbit-0:5672/vh, amqp://u:p@rabbit-1:5672/vh ,amqps://v:q@rabbit-2/other",
    )
    .unwrap();
    assert_eq!(
        urls,
        [
            "amqp://u:p@rabbit-0:5672/vh?heartbeat=10&frame_max=16384",
            "amqp://u:p@rabbit-1:5672/vh?heartbeat=10&frame_max=16384",
            "amqps://v:q@rabbit-2/other?heartbeat=10&frame_max=16384",
        ]
    );
    let error = parse_amqp_urls("amqp://a:b@one/%2f,http://two").unwrap_err();
    assert!(error.starts_with("address 2 of the list"), "{error}");
    assert!(!error.contains("two"), "the value is echoed: {error}");
    assert!(parse_amqp_urls("amqp://one,,amqp://two").is_err());
    assert_eq!(parse_amqp_urls("amqp://one, amqp://one").unwrap().len(), 1);
}

#[test]
fn the_file_fills_in_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"billing\"\nmax_body = 2048\nexchange = \"from-file\"\n",
    )
    .unwrap();
    let config = Config::load(Some(&path), &env(&[("CAUSEWAY_EXCHANGE", "from-env")])).unwrap();
    assert_eq!(config.service, "billing");
    assert_eq!(config.max_body, 2048);
    assert_eq!(config.broker.exchange, "from-env");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_file_keys_and_bad_file_values_are_reported() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"billing\"\nmax_bodyy = 1\nmax_in_flight = 0\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    let name = path.display().to_string();
    assert_eq!(
        origins(&error),
        [
            format!("max_bodyy in {name}"),
            format!("max_in_flight in {name}")
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_file_is_reported() {
    let error = Config::load(
        Some(Path::new("/nonexistent/causeway.toml")),
        &env(&[("CAUSEWAY_SERVICE", "orders")]),
    )
    .unwrap_err();
    assert_eq!(origins(&error), ["/nonexistent/causeway.toml"]);
}

#[test]
fn subscriptions_come_from_the_file_and_are_checked() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        r#"
service = "inventory"

[[subscriptions]]
name = "reserve-stock"
event_type = "OrderPlaced"
versions = [1, 2]
route = "/events/order-placed"
max_attempts = 3

[[subscriptions]]
name = "audit"
event_type = "OrderPlaced"
route = "/audit"
"#,
    )
    .unwrap();
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    let names: Vec<_> = config
        .subscriptions
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["reserve-stock", "audit"]);
    assert_eq!(config.subscriptions[0].spec.max_attempts, 3);
    assert_eq!(config.subscriptions[0].spec.versions, Some(vec![1, 2]));

    std::fs::write(
        &path,
        r#"
service = "inventory"

[[subscriptions]]
name = "a"
event_type = "OrderPlaced"
route = "no-slash"

[[subscriptions]]
event_type = "OrderPlaced"
route = "/b"

[[subscriptions]]
name = "c"
event_type = "OrderPlaced"
route = "/c"
retries = 4
"#,
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    let text = error.to_string();
    assert_eq!(error.0.len(), 3, "{text}");
    assert!(text.contains("subscriptions[0] (a).route"), "{text}");
    assert!(text.contains("subscriptions[1]"), "{text}");
    assert!(text.contains("retries"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_causeway_variables_are_warned_about_but_kubernetes_ones_are_not() {
    let config = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_MAX_BODYY", "1"),
            ("CAUSEWAY_SERVICE_HOST", "10.0.0.1"),
            ("CAUSEWAY_PORT_7070_TCP", "tcp://10.0.0.1:7070"),
            ("CAUSEWAY_CONFIG", "/etc/causeway.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(
        config.warnings,
        ["CAUSEWAY_MAX_BODYY is set but no setting reads it (a typo?)"]
    );
}

#[test]
fn values_that_may_hold_secrets_are_not_echoed() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_AMQP_URL", "http://user:hunter2@rabbit"),
            ("CAUSEWAY_DEDUP_URL", "rediss://:hunter2@redis"),
            ("CAUSEWAY_APP_URL", "https://127.0.0.1:8080"),
        ]),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("CAUSEWAY_AMQP_URL") && text.contains("CAUSEWAY_DEDUP_URL"),
        "{text}"
    );
    assert!(text.contains("\"https://127.0.0.1:8080\""), "{text}");
}
