//! `causeway dlq …` against a running sidecar; `causeway schema consumers` over a list of
//! management addresses.
#![allow(clippy::unwrap_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{Broker, Settings, app::TestApp};

fn causeway(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .env_remove("CAUSEWAY_API_TOKEN")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dlq_list_replay_and_purge_work_through_the_api() {
    let app = TestApp::start().await;
    app.always("/cli", 422);
    let token = "cli-token-0123456789";
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_API_TOKEN", token)
        .config_file(
            "[[subscriptions]]\nname = \"cli\"\nevent_type = \"OrderPlaced\"\nroute = \"/cli\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let bearer = format!("Bearer {token}");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let published = sidecar
            .publish("OrderPlaced", "{}", &[("Authorization", bearer.as_str())])
            .await;
        ids.push(published.body["event_id"].as_str().unwrap().to_owned());
    }
    app.wait_for("/cli", 2, Duration::from_secs(15)).await;
    let api = sidecar.api.as_str();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let listing = loop {
        let (code, out, err) = causeway(&["dlq", "list", "cli", "--api", api, "--token", token]);
        assert_eq!(code, 0, "{err}");
        if out.contains("2 of 2 dead letters") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(listing.starts_with("EVENT ID"), "{listing}");
    assert!(
        listing.contains(&ids[0]) && listing.contains(&ids[1]),
        "{listing}"
    );
    assert!(listing.contains("rejected"), "{listing}");
    assert!(listing.contains("422"), "{listing}");

    let (code, _, err) = causeway(&["dlq", "list", "cli", "--api", api]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");

    app.always("/cli", 200);
    let (code, out, err) = causeway(&[
        "dlq", "replay", "cli", &ids[0], "--api", api, "--token", token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "replayed 1\n");
    app.wait_for("/cli", 3, Duration::from_secs(15)).await;

    let (code, _, err) = causeway(&["dlq", "purge", "cli", "--api", api, "--token", token]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = causeway(&[
        "dlq", "purge", "cli", "--yes", "--api", api, "--token", token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "purged 1\n");

    let closed = closed_port();
    let (code, _, err) = causeway(&[
        "dlq",
        "list",
        "cli",
        "--api",
        &format!("http://127.0.0.1:{closed}"),
    ]);
    assert_eq!(code, 69, "{err}");

    sidecar.cleanup_subscription(&broker, "cli").await;
    sidecar.cleanup(&broker).await;
}

fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn schema_consumers_tries_each_management_address_in_order() {
    let (down, also_down) = (closed_port(), closed_port());
    let event_type = common::unique("Probe");

    // The first address refuses; the second (the machine's broker) answers.
    let list = format!("http://127.0.0.1:{down}, http://127.0.0.1:15672");
    let (code, out, err) = causeway(&[
        "schema",
        "consumers",
        &event_type,
        "--exchange",
        "amq.topic",
        "--management-url",
        &list,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("no queue on amq.topic receives {event_type}\n")
    );

    // None answers: the error names each address, without its credentials.
    let list = format!("http://u:secret@127.0.0.1:{down},http://127.0.0.1:{also_down}");
    let (code, _, err) = causeway(&[
        "schema",
        "consumers",
        &event_type,
        "--management-url",
        &list,
    ]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&format!("http://127.0.0.1:{down}:")), "{err}");
    assert!(
        err.contains(&format!("http://127.0.0.1:{also_down}:")),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}
