//! Process-wide health flags read by `/readyz` and the request handlers.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Shared health state. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    draining: Arc<AtomicBool>,
}

impl Health {
    /// Marks the sidecar as draining: not ready, and refusing new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the sidecar is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
