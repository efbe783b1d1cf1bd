//! The set of subscriptions this sidecar serves: the config file's, plus those made over the
//! API (kept in the embedded store so that they survive restarts).

use std::collections::BTreeMap;

use tokio::sync::{Mutex, watch};
use tracing::warn;

use super::{Origin, Subscription, SubscriptionSpec};
use crate::store::{EmbeddedStore, StoreError};

/// Why a change to the set was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Config-file subscriptions change only with the file.
    #[error("subscription {0} is defined in the config file; change it there")]
    ConfigOwned(String),
    /// The change needs the subscription's queue to be declared with other arguments, which
    /// the broker cannot do in place.
    #[error(
        "subscription {name}: {field} cannot change on an existing subscription (its queue keeps the arguments it was declared with)"
    )]
    NotInPlace {
        /// The subscription.
        name: String,
        /// The field that cannot change.
        field: &'static str,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The desired subscriptions; consumers follow [`Registry::watch`].
#[derive(Debug)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, (Subscription, Origin)>>,
    desired: watch::Sender<Vec<Subscription>>,
    store: EmbeddedStore,
}

impl Registry {
    /// The config file's subscriptions plus the API-made ones found in the store. A stored
    /// one that clashes with a config name, or no longer passes the checks, is skipped.
    pub fn load(from_config: Vec<Subscription>, store: EmbeddedStore) -> Result<Self, StoreError> {
        let mut entries = BTreeMap::new();
        for subscription in from_config {
            entries.insert(subscription.name.clone(), (subscription, Origin::Config));
        }
        for (name, json) in store.subscriptions()? {
            if entries.contains_key(&name) {
                warn!(subscription = %name, "an API-made subscription has the name of a config-file one; the config file wins");
                continue;
            }
            let parsed = serde_json::from_slice::<SubscriptionSpec>(&json)
                .map_err(|e| e.to_string())
                .and_then(|spec| {
                    Subscription::new(&name, spec).map_err(|problems| format!("{problems:?}"))
                });
            match parsed {
                Ok(subscription) => {
                    entries.insert(name, (subscription, Origin::Api));
                }
                Err(error) => {
                    warn!(subscription = %name, %error, "a stored subscription is invalid and skipped")
                }
            }
        }
        let (desired, _) = watch::channel(desired_of(&entries));
        Ok(Registry {
            entries: Mutex::new(entries),
            desired,
            store,
        })
    }

    /// Follows the desired set.
    pub fn watch(&self) -> watch::Receiver<Vec<Subscription>> {
        self.desired.subscribe()
    }

    /// Every subscription, by name.
    pub async fn list(&self) -> Vec<(Subscription, Origin)> {
        self.entries.lock().await.values().cloned().collect()
    }

    /// One subscription.
    pub async fn get(&self, name: &str) -> Option<(Subscription, Origin)> {
        self.entries.lock().await.get(name).cloned()
    }

    /// Creates or replaces an API-made subscription; returns whether it is new.
    pub async fn put(&self, subscription: Subscription) -> Result<bool, RegistryError> {
        let mut entries = self.entries.lock().await;
        let existing = entries.get(&subscription.name);
        if matches!(existing, Some((_, Origin::Config))) {
            return Err(RegistryError::ConfigOwned(subscription.name));
        }
        if let Some((current, _)) = existing
            && current.spec.ordered != subscription.spec.ordered
        {
            return Err(RegistryError::NotInPlace {
                name: subscription.name,
                field: "ordered",
            });
        }
        let created = existing.is_none();
        let json = serde_json::to_vec(&subscription.spec).map_err(StoreError::from)?;
        self.store
            .save_subscription(&subscription.name, json)
            .await?;
        entries.insert(subscription.name.clone(), (subscription, Origin::Api));
        self.desired.send_replace(desired_of(&entries));
        Ok(created)
    }

    /// Removes an API-made subscription; returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        let mut entries = self.entries.lock().await;
        match entries.get(name) {
            None => return Ok(false),
            Some((_, Origin::Config)) => return Err(RegistryError::ConfigOwned(name.to_owned())),
            Some((_, Origin::Api)) => {}
        }
        self.store.delete_subscription(name).await?;
        entries.remove(name);
        self.desired.send_replace(desired_of(&entries));
        Ok(true)
    }
}

fn desired_of(entries: &BTreeMap<String, (Subscription, Origin)>) -> Vec<Subscription> {
    entries.values().map(|(s, _)| s.clone()).collect()
}
