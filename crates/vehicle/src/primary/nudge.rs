//! Listens for "check in now" nudges (see [`rampart_client::nudge`]) and wakes the primary's
//! loop. The nudge is only a wake-up: the cycle it starts verifies everything as any other,
//! and the loop allows at most one early cycle per `min_interval_seconds`.

use std::sync::Arc;
use std::time::Duration;

use rampart_client::nudge::{topic, Broker};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::Notify;

use super::config::{NudgeConfig, PrimaryConfig};
use crate::error::{Error, Result};

/// A running listener: `notified` when a nudge arrived (several coalesce into one).
pub(crate) struct Nudges {
    pub(crate) notify: Arc<Notify>,
    pub(crate) min_interval: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nudges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts listening, if `[nudges]` is configured.
pub(crate) fn listen(config: &PrimaryConfig) -> Result<Option<Nudges>> {
    let Some(n) = &config.nudges else {
        return Ok(None);
    };
    let broker = broker(config, n)?;
    let options = broker
        .options(&format!("rampart-{}", config.vin))
        .map_err(|e| Error::Config(e.to_string()))?;
    let (client, mut events) = AsyncClient::new(options, 16);
    let notify = Arc::new(Notify::new());
    let topic = topic(&n.topic_prefix, &config.vin);
    let wake = notify.clone();
    let url = broker.url.clone();
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failing = false;
                    tracing::info!(broker = %url, %topic, "listening for nudges");
                    if let Err(e) = client.subscribe(topic.as_str(), QoS::AtMostOnce).await {
                        tracing::warn!(error = %e, "could not subscribe to nudges");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    tracing::debug!(bytes = p.payload.len(), "nudge received");
                    wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(broker = %url, error = %e, "nudges unavailable; polling only");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
    Ok(Some(Nudges {
        notify,
        min_interval: Duration::from_secs(n.min_interval_seconds.max(1)),
        task,
    }))
}

fn broker(config: &PrimaryConfig, n: &NudgeConfig) -> Result<Broker> {
    let mut broker = Broker {
        url: n.url.trim().to_owned(),
        ..Broker::default()
    };
    if broker.url.starts_with("mqtts://") {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::io(p, e));
        broker.ca_pem = config.ca.as_deref().map(read).transpose()?;
        broker.identity_pem = config.client_cert.as_deref().map(read).transpose()?;
    }
    if let Some(user) = &n.username {
        broker.credentials = Some((user.clone(), String::new()));
    }
    Ok(broker)
}
