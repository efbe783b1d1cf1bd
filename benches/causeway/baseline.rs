//! The baselines: what an app would do with lapin itself, publishing and consuming, and the
//! queues they use.

use std::{sync::Arc, time::Instant};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::json;

use crate::{
    DELIVERIES, PAYLOAD_BYTES,
    client::{Sample, measure},
    process::Proc,
};

/// The queue both publish runs fill: classic and durable, or quorum (like a subscription's)
/// with `BENCH_SINK=quorum`.
pub async fn declare_sink(channel: &Channel, exchange: &str, queue: &str) {
    let quorum = std::env::var("BENCH_SINK").is_ok_and(|kind| kind == "quorum");
    declare_queue(channel, queue, quorum).await;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Declares a durable queue, classic or quorum.
pub async fn declare_queue(channel: &Channel, queue: &str, quorum: bool) {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
}

pub async fn purge(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await;
}

/// What the raw baseline publishes.
#[derive(Clone, Copy, Debug)]
pub enum Raw {
    /// The 512-byte payload alone, persistent: the least a publisher can send.
    Bare,
    /// What causeway sends for the same payload, built by the publisher itself: the envelope
    /// (a new event id, the correlation id, the time) as the body, and the AMQP properties
    /// and headers that mirror it, mandatory. The broker does the same work for both, so the
    /// ratio against it is causeway's own cost.
    HandRolled,
}

/// The baseline: what an app would do with lapin itself, one channel in confirm mode,
/// persistent messages, each client awaiting its own confirm.
pub async fn raw_publish(
    connection: &Connection,
    exchange: &str,
    clients: usize,
    raw: Raw,
) -> Sample {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = Arc::new(crate::payload().into_bytes());
    let exchange = Arc::new(exchange.to_owned());
    measure(clients, move |_| {
        let (channel, body, exchange) = (channel.clone(), body.clone(), exchange.clone());
        async move {
            let (body, properties, mandatory) = match raw {
                Raw::Bare => (
                    body.to_vec(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                    false,
                ),
                Raw::HandRolled => {
                    let message = HandRolled::new(&body).expect("the payload is JSON");
                    (message.body, message.properties, true)
                }
            };
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "Bench.v1".into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await
                .unwrap();
            confirm.await.is_ok_and(|c| c.is_ack())
        }
    })
    .await
}

/// An envelope around a payload and its AMQP properties, as a publisher would build them to
/// give consumers what causeway gives them (see docs/api.md, "The envelope").
pub struct HandRolled {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub event_id: String,
    pub occurred_at: String,
}

impl HandRolled {
    /// The message for `payload`, or `None` when it is not JSON.
    pub fn new(payload: &[u8]) -> Option<HandRolled> {
        let event_id = uuid::Uuid::now_v7().to_string();
        let now = std::time::SystemTime::now();
        let payload: &serde_json::value::RawValue = serde_json::from_slice(payload).ok()?;
        let occurred_at = humantime::format_rfc3339_micros(now).to_string();
        let body = serde_json::to_vec(&json!({
            "event_id": event_id, "event_type": "Bench", "schema_version": "1.0",
            "correlation_id": event_id, "causation_id": null,
            "occurred_at": occurred_at,
            "source": "bench", "payload": payload,
        }))
        .ok()?;
        let mut headers = FieldTable::default();
        headers.insert("schema_version".into(), AMQPValue::LongString("1.0".into()));
        // The CloudEvents AMQP binding's properties, which causeway adds to every message.
        for (name, value) in [
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", event_id.as_str()),
            ("cloudEvents_type", "Bench"),
            ("cloudEvents_source", "bench"),
            ("cloudEvents_time", occurred_at.as_str()),
            ("cloudEvents_correlationid", event_id.as_str()),
            ("cloudEvents_schemaversion", "1.0"),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let timestamp = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let properties = BasicProperties::default()
            .with_message_id(event_id.as_str().into())
            .with_correlation_id(event_id.as_str().into())
            .with_type("Bench".into())
            .with_app_id("bench".into())
            .with_timestamp(timestamp)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        Some(HandRolled {
            body,
            properties,
            event_id,
            occurred_at,
        })
    }
}

/// Fills `queue` with `DELIVERIES` envelopes, as causeway would publish them.
pub async fn preload(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for n in 0..DELIVERIES {
        let event_id = uuid::Uuid::now_v7();
        let envelope = json!({
            "event_id": event_id, "event_type": "Bench", "schema_version": "1.0",
            "correlation_id": format!("bench-{n}"), "causation_id": null,
            "occurred_at": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "source": "bench", "payload": {"pad": "x".repeat(PAYLOAD_BYTES - 20)},
        });
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event_id.to_string().into());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    envelope.to_string().as_bytes(),
                    properties,
                )
                .await
                .unwrap(),
        );
        if confirms.len() >= 1024 {
            for confirm in confirms.drain(..) {
                confirm.await.unwrap();
            }
        }
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }
}

/// The baseline: consume and ack, prefetch 256, on a quorum queue like a subscription's.
/// Returns the sample and the CPU seconds this process spent while it ran: the whole
/// process's, from /proc/self/stat, since lapin's I/O thread does half the work and nothing
/// else in this process runs meanwhile.
pub async fn raw_consume(connection: &Connection, admin: &Channel, id: &str) -> (Sample, f64) {
    let queue = format!("bench.{id}.raw");
    declare_queue(admin, &queue, true).await;
    preload(connection, &queue).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Timed from the first delivery, like the sidecar's run (which starts up first).
    let first = consumer.next().await.unwrap().unwrap();
    first.ack(BasicAckOptions::default()).await.unwrap();
    let me = Proc::me();
    let cpu_before = me.cpu_seconds();
    let started = Instant::now();
    let mut count = 0;
    while count < DELIVERIES - 1 {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        count += 1;
    }
    let elapsed = started.elapsed();
    let cpu = me.cpu_seconds() - cpu_before;
    let _ = channel.close(200, "done".into()).await;
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let sample = Sample {
        count: count as u64,
        elapsed,
        latencies: Vec::new(),
    };
    (sample, cpu)
}
