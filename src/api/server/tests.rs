use std::sync::Arc;

use super::*;

fn closed_at_cap(metrics: &Metrics) -> String {
    metrics
        .encode()
        .lines()
        .find(|line| {
            line.starts_with("causeway_http_connections_closed_total{")
                && line.contains("reason=\"cap\"")
        })
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_cap_refuses_beyond_its_slots_and_frees_them_when_dropped() {
    let metrics = Arc::new(Metrics::default());
    metrics.http().listening(Listener::Admin);
    let cap = Arc::new(Cap::new(Listener::Admin, 10, metrics.clone()));
    let mut open: Vec<_> = (0..10).map(|_| cap.take().unwrap()).collect();
    assert!(
        metrics
            .encode()
            .contains("causeway_http_connections{listener=\"admin\"} 10")
    );
    assert!(cap.take().is_none());
    assert!(cap.take().is_none());
    assert!(closed_at_cap(&metrics).ends_with(" 2"), "{metrics:?}");
    open.pop();
    assert!(cap.take().is_some(), "a freed slot is taken again");
    drop(open);
    assert!(
        metrics
            .encode()
            .contains("causeway_http_connections{listener=\"admin\"} 0")
    );
}

#[test]
fn accept_errors_pause_longer_each_time_up_to_a_second_and_start_over_after_a_success() {
    let mut errors = AcceptErrors::new(Listener::Api);
    let emfile = io::Error::from_raw_os_error(24);
    let pauses: Vec<u128> = (0..9).map(|_| errors.failed(&emfile).as_millis()).collect();
    assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    errors.recovered();
    assert_eq!(errors.failed(&emfile), Duration::from_millis(10));
}

#[test]
fn a_client_that_gave_up_is_not_a_listener_error() {
    assert!(is_connection_error(
        &io::ErrorKind::ConnectionAborted.into()
    ));
    assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
}
