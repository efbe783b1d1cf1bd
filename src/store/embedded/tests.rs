use super::*;
use crate::health::{Store, StoreHealth, StoreState};
use crate::store::CorrelationMemory;
use uuid::Uuid;

fn record(expires_at_ms: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        event: crate::envelope::EventIdentity {
            event_id: Uuid::now_v7(),
            event_type: "OrderPlaced".into(),
            schema_version: "1.0".parse().unwrap(),
            correlation_id: "c".into(),
            causation_id: None,
            occurred_at: crate::envelope::now_rfc3339(),
        },
        confirmed: false,
        expires_at_ms,
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        TempDir(std::env::temp_dir().join(format!("causeway-store-{}", Uuid::now_v7())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn reopen(dir: &Path) -> EmbeddedStore {
    // The writer thread ends when its last sender is dropped, and the file lock with it.
    for _ in 0..500 {
        if let Ok(store) = EmbeddedStore::open(dir) {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store could not be reopened");
}

#[tokio::test]
async fn records_survive_a_reopen() {
    let dir = TempDir::new();
    let stored = record(now_ms() + 60_000);
    {
        let store = EmbeddedStore::open(&dir.0).unwrap();
        store.put_key("k1", stored.clone()).await.unwrap();
        store
            .complete("sub/e1", Duration::from_secs(60))
            .await
            .unwrap();
        store
            .save_subscription("orders", b"{}".to_vec())
            .await
            .unwrap();
    }
    let store = reopen(&dir.0).await;
    assert_eq!(store.get_key("k1").await.unwrap(), Some(stored));
    assert_eq!(store.get_key("k2").await.unwrap(), None);
    assert_eq!(
        store.claim("sub/e1", Duration::from_secs(5)).await.unwrap(),
        Claim::Done
    );
    assert_eq!(
        store.subscriptions().unwrap(),
        [("orders".to_string(), b"{}".to_vec())]
    );
}

#[tokio::test]
async fn expired_records_are_invisible_and_swept() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    store.put_key("old", record(now_ms() - 1)).await.unwrap();
    store
        .put_key("new", record(now_ms() + 60_000))
        .await
        .unwrap();
    store
        .complete("sub/old-event", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.get_key("old").await.unwrap(), None);
    assert_eq!(
        store
            .claim("sub/old-event", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Acquired,
        "an expired dedup record no longer blocks delivery"
    );
    let removed = store.write(|txn| sweep(txn, now_ms())).await.unwrap();
    assert_eq!(removed, 2);
    assert!(store.get_key("new").await.unwrap().is_some());
}

#[tokio::test]
async fn a_claim_is_exclusive_until_released_or_completed() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    let lease = Duration::from_secs(30);
    assert_eq!(store.claim("s/e", lease).await.unwrap(), Claim::Acquired);
    assert_eq!(store.claim("s/e", lease).await.unwrap(), Claim::Busy);
    assert_eq!(
        store.claim("other/e", lease).await.unwrap(),
        Claim::Acquired
    );
    store.release("s/e").await.unwrap();
    assert_eq!(store.claim("s/e", lease).await.unwrap(), Claim::Acquired);
    store.complete("s/e", lease).await.unwrap();
    assert_eq!(store.claim("s/e", lease).await.unwrap(), Claim::Done);
}

#[tokio::test]
async fn an_expired_lease_can_be_claimed_again() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    assert_eq!(
        store.claim("s/e", Duration::from_millis(1)).await.unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.claim("s/e", Duration::from_secs(5)).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn a_held_correlation_is_answered_from_memory_then_written_with_the_delivery() {
    let dir = TempDir::new();
    let day = Duration::from_secs(86_400);
    {
        let store = EmbeddedStore::open(&dir.0).unwrap();
        let mut held = store.hold_correlation("e1", "flow-1", day).unwrap();
        assert_eq!(
            store.correlation_of("e1").unwrap().as_deref(),
            Some("flow-1")
        );
        assert_eq!(store.claim("s/e1", day).await.unwrap(), Claim::Acquired);
        store
            .complete_holding("s/e1", day, &mut held)
            .await
            .unwrap();
        drop(held);
        assert!(
            lock(&store.uncommitted_correlations).is_empty(),
            "memory let go of it once the file had it"
        );
        // One expiry entry covers both records of the delivery.
        let entries = store
            .write(|txn| {
                let index = txn.open_table(EXPIRY)?;
                let mut entries = Vec::new();
                for entry in index.iter()? {
                    let (key, _) = entry?;
                    let (_, table, name) = key.value();
                    entries.push(format!("{table} {name}"));
                }
                Ok(entries)
            })
            .await
            .unwrap();
        assert_eq!(entries, ["delivery s/e1"]);
    }
    let store = reopen(&dir.0).await;
    assert_eq!(
        store.correlation_of("e1").unwrap().as_deref(),
        Some("flow-1")
    );
    assert_eq!(store.claim("s/e1", day).await.unwrap(), Claim::Done);
    assert_eq!(store.correlation_of("e2").unwrap(), None);
}

#[tokio::test]
async fn a_correlation_held_by_a_failed_delivery_is_written_on_its_own() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    let held = store
        .hold_correlation("e1", "flow-1", Duration::from_secs(60))
        .unwrap();
    drop(held);
    // Lazy: it rides with the next durable commit, and is answered from memory until then.
    assert_eq!(
        store.correlation_of("e1").unwrap().as_deref(),
        Some("flow-1")
    );
    store
        .complete("s/other", Duration::from_secs(60))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lock(&store.uncommitted_correlations).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the correlation was never written"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        store.correlation_of("e1").unwrap().as_deref(),
        Some("flow-1")
    );
}

#[tokio::test]
async fn a_delivery_and_its_correlation_expire_and_are_swept_together() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    let mut held = store
        .hold_correlation("e1", "flow-1", Duration::from_millis(1))
        .unwrap();
    store
        .complete_holding("s/e1", Duration::from_millis(1), &mut held)
        .await
        .unwrap();
    // Delivered to a second subscription later, kept longer: its correlation stays.
    let mut again = store
        .hold_correlation("e2", "flow-2", Duration::from_secs(60))
        .unwrap();
    store
        .complete_holding("t/e2", Duration::from_secs(60), &mut again)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let removed = store.write(|txn| sweep(txn, now_ms())).await.unwrap();
    assert_eq!(removed, 2, "the dedup record and the correlation of e1");
    assert_eq!(store.correlation_of("e1").unwrap(), None);
    assert_eq!(
        store.claim("s/e1", Duration::from_secs(5)).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.correlation_of("e2").unwrap().as_deref(),
        Some("flow-2")
    );
}

#[tokio::test]
async fn concurrent_writes_all_land() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0).unwrap();
    let writes = (0..200).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_key(&format!("key-{i}"), record(now_ms() + 60_000))
                .await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().unwrap();
    }
    for i in 0..200 {
        assert!(store.get_key(&format!("key-{i}")).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn after_an_io_error_the_store_fails_fast_then_opens_the_file_again() {
    let dir = TempDir::new();
    let health = StoreHealth::detached(Store::Embedded, StoreState::Ok);
    let store = EmbeddedStore::open_with(&dir.0, health.clone()).unwrap();
    let lease = Duration::from_secs(30);
    store.complete("s/before", lease).await.unwrap();
    assert_eq!(store.claim("s/held", lease).await.unwrap(), Claim::Acquired);
    // A reader's handle keeps the broken file open, so the store stays broken until it
    // is dropped.
    let reader = store.shared.database().unwrap();

    let failed = store
        .write(|_| -> Result<(), redb::Error> {
            Err(redb::Error::Io(std::io::Error::other(
                "No space left on device",
            )))
        })
        .await
        .unwrap_err();
    assert!(failed.is_unavailable(), "{failed}");
    assert!(
        matches!(health.state(), StoreState::Failing { ref reason } if reason.contains("No space left")),
        "{:?}",
        health.state()
    );
    for error in [
        store.claim("s/other", lease).await.unwrap_err(),
        store.complete("s/held", lease).await.unwrap_err(),
        store
            .put_key("k", record(now_ms() + 60_000))
            .await
            .unwrap_err(),
        store.subscriptions().unwrap_err(),
    ] {
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains("No space left"), "{error}");
    }

    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.put_key("k", record(now_ms() + 60_000)).await.is_err() {
        assert!(Instant::now() < deadline, "the store was not opened again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health.state(), StoreState::Ok);
    assert_eq!(store.claim("s/before", lease).await.unwrap(), Claim::Done);
    // The failed record kept its claim: a copy arriving meanwhile waits.
    assert_eq!(store.claim("s/held", lease).await.unwrap(), Claim::Busy);
    store.complete("s/held", lease).await.unwrap();
    assert_eq!(store.claim("s/held", lease).await.unwrap(), Claim::Done);
}

mod flows {
    use super::*;
    use crate::flow::{EventFacts, FlowStore, Kind, Receipt, Route};

    fn receipt(correlation_id: &str, event_id: &str, at_ms: u64) -> Receipt {
        Receipt {
            kind: Kind::Published,
            at_ms,
            correlation_id: correlation_id.into(),
            event: EventFacts {
                event_id: event_id.into(),
                event_type: "OrderPlaced".into(),
                schema_version: "1.0".into(),
                source: "order".into(),
                occurred_at: String::new(),
                causation_id: None,
            },
            hop: None,
        }
    }

    #[tokio::test]
    async fn receipts_are_kept_per_flow_in_order_and_found_by_event() {
        let dir = TempDir::new();
        let store = EmbeddedStore::open(&dir.0).unwrap();
        let day = Duration::from_secs(86_400);
        store
            .append(&[receipt("a", "e1", 10), receipt("b", "e2", 11)], day)
            .await
            .unwrap();
        // A flow whose id extends another's is a flow of its own.
        store
            .append(&[receipt("a", "e3", 12), receipt("ab", "e4", 13)], day)
            .await
            .unwrap();
        let (receipts, truncated) = store.receipts("a").await.unwrap();
        let ids: Vec<&str> = receipts.iter().map(|r| r.event.event_id.as_str()).collect();
        assert_eq!((ids, truncated), (vec!["e1", "e3"], false));
        assert_eq!(
            store.flow_of_event("e2").await.unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(store.flow_of_event("nope").await.unwrap(), None);
        assert_eq!(store.recent(2).await.unwrap().len(), 2);
        assert!(store.receipts("missing").await.unwrap().0.is_empty());
        // Survives a reopen.
        drop(store);
        let store = reopen(&dir.0).await;
        assert_eq!(store.receipts("ab").await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn a_flow_expires_after_its_latest_receipt_and_is_swept_whole() {
        let dir = TempDir::new();
        let store = EmbeddedStore::open(&dir.0).unwrap();
        store
            .append(
                &[receipt("gone", "e1", 10), receipt("gone", "e2", 11)],
                Duration::from_millis(1),
            )
            .await
            .unwrap();
        store
            .append(&[receipt("kept", "e3", 12)], Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(store.receipts("gone").await.unwrap().0.is_empty());
        assert_eq!(store.recent(10).await.unwrap(), ["kept"]);
        let swept = store.write(|txn| sweep(txn, now_ms())).await.unwrap();
        assert_eq!(
            swept, 4,
            "both receipts of the expired flow and their events' flow ids"
        );
        assert_eq!(store.receipts("kept").await.unwrap().0.len(), 1);
        // A later receipt extends the flow.
        store
            .append(&[receipt("kept", "e4", 13)], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.receipts("kept").await.unwrap().0.len(), 2);
        assert_eq!(store.recent(10).await.unwrap(), ["kept"]);
    }

    #[tokio::test]
    async fn routes_are_replaced_by_key_and_forgotten_with_an_end_of_zero() {
        let dir = TempDir::new();
        let store = EmbeddedStore::open(&dir.0).unwrap();
        let route = Route {
            exchange: "events".into(),
            service: "inventory".into(),
            subscription: "reserve".into(),
            event_type: "OrderPlaced".into(),
            versions: None,
            since_ms: 5,
            until_ms: None,
        };
        store
            .put_routes(std::slice::from_ref(&route))
            .await
            .unwrap();
        let ended = Route {
            until_ms: Some(9),
            ..route.clone()
        };
        store
            .put_routes(std::slice::from_ref(&ended))
            .await
            .unwrap();
        assert_eq!(store.routes().await.unwrap(), vec![ended.clone()]);
        let forget = Route {
            until_ms: Some(0),
            ..ended
        };
        store.put_routes(&[forget]).await.unwrap();
        assert!(store.routes().await.unwrap().is_empty());
    }
}
