//! The flow page at `/ui/`, in a real headless Chromium against real sidecars: the page and
//! its policy, a stuck flow across two sidecars that share Redis (replayed from the page until
//! it settles), the token form, and the dead letters' Replay and Purge buttons.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use common::{Broker, Settings, Sidecar, app::TestApp, browser::Browser, unique};
use serde_json::Value;

/// How long the page may take to show what the sidecars did (a delivery, a refresh every 2 s).
const SEEN: Duration = Duration::from_secs(30);
const REDIS: &str = "redis://127.0.0.1:6379/";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
/// The demo's flow definition: an order is done once its stock is reserved.
const ORDER_FLOW: &str = "[[flows]]\nname = \"order\"\nstarts_with = \"OrderPlaced\"\n\
                          completes_on = [\"StockReserved\"]\nwithin = \"5m\"\n";

/// One subscription, one wait queue (`max_attempts = 2`), one delivery at a time.
fn subscription(name: &str, event_type: &str, route: &str) -> String {
    format!(
        "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"{event_type}\"\nroute = \"{route}\"\n\
         max_attempts = 2\nconcurrency = 1\n"
    )
}

fn client_without_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The demo's inventory app, as far as the page's test needs it: while `refusing`, an order is
/// for an unknown SKU, refused with a `422` whose problem detail the sidecar keeps as the last
/// error; after, it reserves the stock and publishes `StockReserved` through its sidecar,
/// caused by the order.
#[derive(Clone, Default)]
struct Inventory {
    refusing: Arc<AtomicBool>,
    /// The API of its sidecar, known once the sidecar runs.
    sidecar: Arc<OnceLock<String>>,
}

impl Inventory {
    /// Serves `POST /reserve-stock` on a free loopback port; its URL.
    async fn start(&self) -> String {
        let router = Router::new()
            .route("/reserve-stock", post(reserve_stock))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }
}

async fn reserve_stock(State(inventory): State<Inventory>, headers: HeaderMap) -> Response {
    if inventory.refusing.load(Ordering::SeqCst) {
        let problem = r#"{"status":422,"detail":"unknown SKU 'no-such-sku'"}"#;
        let content_type = [(header::CONTENT_TYPE, "application/problem+json")];
        return (StatusCode::UNPROCESSABLE_ENTITY, content_type, problem).into_response();
    }
    let api = inventory.sidecar.get().unwrap();
    let published = common::http_client()
        .post(format!("{api}/v1/publish/StockReserved"))
        .header("content-type", "application/json")
        .header("X-Causation-ID", headers["x-event-id"].clone())
        .body(r#"{"order_id":"1003"}"#)
        .send()
        .await;
    match published {
        Ok(answer) if answer.status().is_success() => StatusCode::OK.into_response(),
        _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Publishes `event_type` in the flow `correlation_id` through `sidecar`; the event id.
async fn publish(
    sidecar: &Sidecar,
    event_type: &str,
    body: &str,
    correlation_id: &str,
    token: Option<&str>,
) -> String {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("X-Correlation-ID", correlation_id)];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let published = sidecar.publish(event_type, body, &headers).await;
    assert_eq!(published.status, 202, "{published:?}");
    published.body["event_id"].as_str().unwrap().to_owned()
}

/// `text` as JavaScript's `encodeURIComponent` writes it.
fn uri_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_page_is_self_contained_and_served_under_a_strict_policy() {
    let sidecar = Settings::new().start();
    let broker = Broker::connect().await;
    let http = client_without_redirects();

    let redirect = http
        .get(format!("{}/ui", sidecar.api))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    let location = redirect.headers()["location"].to_str().unwrap();
    let target = redirect.url().join(location).unwrap();
    assert_eq!(target.as_str(), format!("{}/ui/", sidecar.api));

    let mut page = String::new();
    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let response = http
            .get(format!("{}{path}", sidecar.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'self';"),
            "{path}: {policy}"
        );
        assert!(policy.contains("script-src 'self';"), "{path}: {policy}");
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        let body = response.text().await.unwrap();
        // Nothing from another origin: no absolute address at all (the page uses relative ones).
        for scheme in ["http://", "https://", "//cdn", "url(http"] {
            assert!(!body.contains(scheme), "{path} refers to {scheme}…");
        }
        if path == "/ui/" {
            page = body;
        }
    }
    // The only script is the served file: an inline one would be refused by the policy.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains(r#"<script src="app.js" defer></script>"#));
    assert!(!page.contains("<style") && !page.contains(" style="));

    let browser = Browser::start().await;
    browser.goto(&format!("{}/ui/", sidecar.api)).await;
    // The script ran (it drew the home view and asked the API), and the style applied.
    browser
        .wait_until(
            "the home view with this sidecar's subscriptions",
            SEEN,
            "const v = document.querySelector('main[data-view=home] [data-dead-letters]');\
             return v && /no subscriptions/.test(v.textContent);",
        )
        .await;
    let layout = browser
        .execute(
            "return getComputedStyle(document.querySelector('header.top')).display;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(layout, "flex", "app.css applied");
    let loaded = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .unwrap();
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let url = format!("{}{asset}", sidecar.api);
        assert!(loaded.contains(&url.as_str()), "{asset} in {loaded:?}");
    }
    for url in &loaded {
        assert!(
            url.starts_with(&sidecar.api),
            "{url} is not from the sidecar"
        );
    }
    // No refusal by the policy, no script error (the browser's own favicon request aside).
    let console: Vec<String> = browser
        .console()
        .await
        .into_iter()
        .filter(|line| !line.contains("favicon.ico"))
        .collect();
    assert!(
        console
            .iter()
            .all(|line| !line.starts_with("SEVERE") && !line.contains("Content Security Policy")),
        "{console:#?}"
    );

    drop(browser);
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_stuck_flow_is_shown_then_replayed_from_the_page_until_it_settles() {
    let app = TestApp::start().await;
    let inventory_app = Inventory::default();
    inventory_app.refusing.store(true, Ordering::SeqCst);
    let inventory_url = inventory_app.start().await;
    let order = Settings::new()
        .set("CAUSEWAY_SERVICE", &unique("order"))
        .set("CAUSEWAY_DEDUP_URL", REDIS)
        .app(&app.url)
        .config_file(&subscription(
            "confirm-order",
            "OrderPlaced",
            "/confirm-order",
        ))
        .start();
    let inventory = Settings::new()
        .set("CAUSEWAY_SERVICE", &unique("inventory"))
        .set("CAUSEWAY_EXCHANGE", order.exchange())
        .set("CAUSEWAY_UNROUTED_QUEUE", order.unrouted())
        .set("CAUSEWAY_DEDUP_URL", REDIS)
        .app(&inventory_url)
        .config_file(&format!(
            "{}\n{ORDER_FLOW}",
            subscription("reserve-stock", "OrderPlaced", "/reserve-stock")
        ))
        .start();
    inventory_app.sidecar.set(inventory.api.clone()).unwrap();
    order.wait_ready().await;
    inventory.wait_ready().await;
    let broker = Broker::connect().await;

    // The demo's order for an unknown SKU: inventory refuses it, so it is dead-lettered.
    let correlation_id = unique("order-1003");
    let placed = publish(
        &order,
        "OrderPlaced",
        r#"{"order_id":"1003","sku":"no-such-sku","quantity":1,"total_cents":1999,"currency":"EUR"}"#,
        &correlation_id,
        None,
    )
    .await;
    inventory.wait_dead_letters("reserve-stock", 1, SEEN).await;
    app.wait_for("/confirm-order", 1, SEEN).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/ui/#/flow/{correlation_id}", inventory.api))
        .await;
    browser
        .wait_attribute("[data-flow-state]", "data-flow-state", "stuck", SEEN)
        .await;
    let node = format!("[data-event-id=\"{placed}\"]");
    let text = browser
        .text(&browser.wait_for(&node, SEEN).await)
        .await
        .unwrap();
    assert!(text.contains("OrderPlaced"), "{text}");
    assert!(text.contains(order.service()), "the source service: {text}");
    let refused = format!(
        "{node} [data-hop=\"{}/reserve-stock\"]",
        inventory.service()
    );
    let confirmed = format!("{node} [data-hop=\"{}/confirm-order\"]", order.service());
    let badge = browser
        .wait_attribute(&refused, "data-state", "dead_lettered", SEEN)
        .await;
    assert!(
        badge.contains("dead lettered"),
        "the state in words: {badge}"
    );
    let tooltip = browser
        .attribute(&browser.wait_for(&refused, SEEN).await, "title")
        .await
        .unwrap()
        .unwrap();
    assert!(tooltip.contains("422"), "the last error: {tooltip}");
    assert!(tooltip.contains("attempts: 1"), "{tooltip}");
    let badge = browser
        .wait_attribute(&confirmed, "data-state", "delivered", SEEN)
        .await;
    assert!(badge.contains("delivered"), "{badge}");
    let reason = browser
        .wait_for(&format!("{refused} [data-dead-letter-reason]"), SEEN)
        .await;
    assert_eq!(
        browser
            .attribute(&reason, "data-dead-letter-reason")
            .await
            .unwrap()
            .as_deref(),
        Some("rejected")
    );
    let reason = browser.text(&reason).await.unwrap();
    assert!(reason.contains("rejected"), "{reason}");
    assert!(
        reason.contains("unknown SKU 'no-such-sku'"),
        "the app's detail: {reason}"
    );
    assert!(
        browser.find("[data-scope-note]").await.is_none(),
        "a shared flow shows every service"
    );
    browser
        .wait_attribute(
            "[data-definition-outcome]",
            "data-definition-outcome",
            "failed",
            SEEN,
        )
        .await;

    let picture = browser.screenshot().await;
    assert!(picture.starts_with(PNG_SIGNATURE), "a PNG");
    if std::env::var("CAUSEWAY_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/flow-stuck.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &picture).unwrap();
    }

    // Fixed: the SKU is in the catalogue now, and inventory reserves the stock.
    inventory_app.refusing.store(false, Ordering::SeqCst);
    browser
        .click("[data-action=replay-flow]:not([disabled])", SEEN)
        .await;
    let question = browser.answer_dialog(true, SEEN).await;
    assert!(question.contains(&correlation_id), "{question}");
    browser
        .wait_attribute(&refused, "data-state", "delivered", SEEN)
        .await;
    browser
        .wait_attribute("[data-flow-state]", "data-flow-state", "settled", SEEN)
        .await;
    browser
        .wait_attribute(
            "[data-definition-outcome]",
            "data-definition-outcome",
            "complete",
            SEEN,
        )
        .await;
    let result = browser
        .text(&browser.wait_for("[data-replay-result]", SEEN).await)
        .await
        .unwrap();
    assert!(result.contains("Replayed 1 dead letter"), "{result}");
    // The reaction is drawn under the event that caused it.
    let reserved = format!("[data-event-type=StockReserved][data-caused-by=\"{placed}\"]");
    let text = browser
        .text(&browser.wait_for(&reserved, SEEN).await)
        .await
        .unwrap();
    assert!(text.contains(inventory.service()), "{text}");
    assert!(text.contains("caused by OrderPlaced"), "{text}");
    let under_parent = browser
        .execute(
            "const [parent, child] = arguments;\
             return document.querySelector(parent).parentElement\
                 .querySelector(':scope > ol.children').contains(document.querySelector(child));",
            vec![Value::from(node.clone()), Value::from(reserved.clone())],
        )
        .await
        .unwrap();
    assert_eq!(under_parent, true);
    assert_eq!(
        inventory.dead_letters("reserve-stock").await["total"],
        0,
        "the dead-letter queue is empty"
    );

    drop(browser);
    inventory
        .cleanup_subscription(&broker, "reserve-stock")
        .await;
    order.cleanup_subscription(&broker, "confirm-order").await;
    order.cleanup(&broker).await;
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_and_then_shows_the_flow() {
    let token = "ui-test-token-7f3a";
    let sidecar = Settings::new().set("CAUSEWAY_API_TOKEN", token).start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    // Markup in an id is shown as text, never read as markup.
    let correlation_id = format!("<em>checkout</em> {}", unique("c"));
    let event_id = publish(
        &sidecar,
        "CartCheckedOut",
        r#"{"cart":7}"#,
        &correlation_id,
        Some(token),
    )
    .await;
    // The page is public; the flow is not.
    let http = client_without_redirects();
    let page = http
        .get(format!("{}/ui/", sidecar.api))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let flow = sidecar
        .call(
            "GET",
            &format!("/v1/flows/{}", uri_component(&correlation_id)),
            None,
        )
        .await;
    assert_eq!(flow.status, 401);

    let browser = Browser::start().await;
    let flow_page = format!(
        "{}/ui/#/flow/{}",
        sidecar.api,
        uri_component(&correlation_id)
    );
    browser.goto(&flow_page).await;
    browser.wait_for("#token-input", SEEN).await;
    browser.type_into("#token-input", "not-the-token").await;
    browser.click("#token-form button[type=submit]", SEEN).await;
    let refused = browser
        .wait_until(
            "the wrong token refused",
            SEEN,
            "const e = document.getElementById('token-error');\
             return e.textContent.includes('refused') ? e.textContent : null;",
        )
        .await;
    assert!(refused.as_str().unwrap().contains("refused"));
    browser.type_into("#token-input", token).await;
    browser.click("#token-form button[type=submit]", SEEN).await;

    browser
        .wait_attribute("[data-flow-state]", "data-flow-state", "settled", SEEN)
        .await;
    browser
        .wait_for(&format!("[data-event-id=\"{event_id}\"]"), SEEN)
        .await;
    let title = browser.wait_for("#flow-title", SEEN).await;
    let title = browser.text(&title).await.unwrap();
    assert_eq!(title, format!("Flow {correlation_id}"));
    let markup = browser
        .execute(
            "return document.querySelectorAll('main em').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(markup, 0, "the id's markup became an element");
    let note = browser.wait_for("[data-scope-note=local]", SEEN).await;
    assert!(
        browser
            .text(&note)
            .await
            .unwrap()
            .contains("Only this sidecar's hops")
    );
    assert!(
        browser.find("#token-input").await.is_some()
            && !browser
                .displayed(&browser.find("#token-input").await.unwrap())
                .await
                .unwrap(),
        "the form is gone"
    );
    // Kept in this tab's session storage, never in the address.
    let kept = browser
        .execute(
            "return sessionStorage.getItem('causeway.api-token');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, token);
    assert!(!browser.url().await.contains(token));

    // The landing view lists the flow; the search finds it by its event id.
    browser.goto(&format!("{}/ui/#/", sidecar.api)).await;
    let listed = format!("[data-listed-flow=\"{correlation_id}\"]");
    browser
        .wait_attribute(&listed, "data-state", "settled", SEEN)
        .await;
    browser.click(&format!("{listed} a"), SEEN).await;
    browser
        .wait_for(&format!("[data-correlation-id=\"{correlation_id}\"]"), SEEN)
        .await;
    browser.goto(&format!("{}/ui/#/", sidecar.api)).await;
    browser.wait_for(&listed, SEEN).await;
    browser.type_into("#search-id", &event_id).await;
    browser.click("#search button[type=submit]", SEEN).await;
    browser
        .wait_for(&format!("[data-event-id=\"{event_id}\"]"), SEEN)
        .await;
    let address = browser.url().await;
    assert!(
        address.ends_with(&format!("#/flow/{}", uri_component(&correlation_id))),
        "{address}"
    );
    assert!(!browser.url().await.contains(token));

    drop(browser);
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged_from_the_page() {
    let app = TestApp::start().await;
    app.always("/audit", 422);
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(&subscription("audit", "InvoiceIssued", "/audit"))
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let (first_flow, second_flow) = (unique("invoice"), unique("invoice"));
    let first = publish(&sidecar, "InvoiceIssued", "{}", &first_flow, None).await;
    let second = publish(&sidecar, "InvoiceIssued", "{}", &second_flow, None).await;
    sidecar.wait_dead_letters("audit", 2, SEEN).await;

    let browser = Browser::start().await;
    browser.goto(&format!("{}/ui/", sidecar.api)).await;
    let section = "[data-subscription=audit]";
    browser
        .wait_for(&format!("{section} [data-dead-letter-total=\"2\"]"), SEEN)
        .await;
    for (event_id, correlation_id) in [(&first, &first_flow), (&second, &second_flow)] {
        let row = format!("{section} tr[data-dead-letter=\"{event_id}\"]");
        let text = browser
            .text(&browser.wait_for(&row, SEEN).await)
            .await
            .unwrap();
        assert!(text.contains(correlation_id.as_str()), "{text}");
        assert!(text.contains("the app answered 422"), "{text}");
        let reason = browser
            .wait_for(&format!("{row} [data-dead-letter-reason=rejected]"), SEEN)
            .await;
        assert_eq!(browser.text(&reason).await.unwrap(), "rejected");
    }

    // Cancelled, a purge does nothing: the replay after it finds both.
    browser
        .click(&format!("{section} [data-action=purge]"), SEEN)
        .await;
    let question = browser.answer_dialog(false, SEEN).await;
    assert!(question.contains("Purge"), "{question}");
    app.always("/audit", 200);
    browser
        .click(&format!("{section} [data-action=replay]"), SEEN)
        .await;
    browser.answer_dialog(true, SEEN).await;
    browser
        .wait_until(
            "the replay's result",
            SEEN,
            "const r = document.querySelector('[data-subscription=audit] [data-action-result]');\
             return r && r.textContent.includes('Replayed') ? r.textContent : null;",
        )
        .await;
    let result = browser
        .text(
            &browser
                .wait_for(&format!("{section} [data-action-result]"), SEEN)
                .await,
        )
        .await
        .unwrap();
    assert_eq!(result, "Replayed 2 dead letters.");
    browser
        .wait_for(&format!("{section} [data-dead-letter-total=\"0\"]"), SEEN)
        .await;
    let received = app.wait_for("/audit", 4, SEEN).await;
    for event_id in [&first, &second] {
        let posts = received.iter().filter(|r| &r.event_id() == event_id);
        assert_eq!(posts.count(), 2, "{event_id}: refused, then replayed");
    }
    assert_eq!(sidecar.dead_letters("audit").await["total"], 0);

    // One more refused, then purged.
    app.always("/audit", 422);
    let third = publish(&sidecar, "InvoiceIssued", "{}", &unique("invoice"), None).await;
    sidecar.wait_dead_letters("audit", 1, SEEN).await;
    browser.click("[data-action=refresh]", SEEN).await;
    browser
        .wait_for(&format!("{section} tr[data-dead-letter=\"{third}\"]"), SEEN)
        .await;
    browser
        .click(&format!("{section} [data-action=purge]"), SEEN)
        .await;
    browser.answer_dialog(true, SEEN).await;
    browser
        .wait_for(&format!("{section} [data-dead-letter-total=\"0\"]"), SEEN)
        .await;
    let result = browser
        .text(
            &browser
                .wait_for(&format!("{section} [data-action-result]"), SEEN)
                .await,
        )
        .await
        .unwrap();
    assert_eq!(result, "Purged 1 dead letter.");
    assert_eq!(sidecar.dead_letters("audit").await["total"], 0);

    drop(browser);
    sidecar.cleanup_subscription(&broker, "audit").await;
    sidecar.cleanup(&broker).await;
}
