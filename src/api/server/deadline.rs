//! A request body that must arrive by a deadline: the read timeout, counted from the
//! request's first byte.

use std::{
    error::Error,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::telemetry::metrics::{Listener, Metrics, Refused};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// The body was not in by the deadline.
    #[error("the request body did not arrive within the read timeout")]
    ReadTimeout,
    /// The connection failed.
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

/// Whether `error`, or one of its causes, is a body that did not arrive in time.
pub(crate) fn is_read_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(error.downcast_ref(), Some(BodyError::ReadTimeout)) {
            return true;
        }
        next = error.source();
    }
    false
}

/// The body of one request, with its deadline.
#[derive(Debug)]
pub(super) struct Deadline {
    body: Incoming,
    deadline: Instant,
    /// Made at the first wait: most bodies are in the first read, with the head.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    listener: Listener,
    metrics: Arc<Metrics>,
}

impl Deadline {
    pub(super) fn new(
        body: Incoming,
        deadline: Instant,
        listener: Listener,
        metrics: Arc<Metrics>,
    ) -> Self {
        Deadline {
            body,
            deadline,
            sleep: None,
            timed_out: false,
            listener,
            metrics,
        }
    }
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyError::ReadTimeout)));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Read)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                this.metrics
                    .http()
                    .refused(this.listener, Refused::ReadTimeout);
                Poll::Ready(Some(Err(BodyError::ReadTimeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_timeout_is_found_among_the_causes() {
        let wrapped = axum::Error::new(BodyError::ReadTimeout);
        assert!(is_read_timeout(&wrapped));
        assert!(is_read_timeout(&BodyError::ReadTimeout));
        let other = std::io::Error::other("reset");
        assert!(!is_read_timeout(&other));
    }
}
