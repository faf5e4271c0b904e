//! Publishes "check in now" nudges (see [`rampart_client::nudge`]) when the director has
//! something new for a vehicle: a campaign instructed it, took an instruction back, or an
//! operator assigned it an update. Fire and forget: a nudge that is lost costs the vehicle
//! nothing but the wait for its next poll, so publishing never blocks or fails a request.

use std::time::Duration;

use rampart_client::nudge::{topic, Broker};
use rumqttc::{AsyncClient, Event, Packet, QoS};

/// The publisher.
pub struct Nudger {
    client: AsyncClient,
    prefix: String,
}

impl Nudger {
    /// Connects to `broker` in the background (reconnecting, with a pause after a failure)
    /// and returns at once.
    pub fn start(broker: &Broker, prefix: &str) -> crate::Result<Nudger> {
        let id = format!("rampart-server-{}", std::process::id());
        let options = broker
            .options(&id)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        let (client, mut events) = AsyncClient::new(options, 1024);
        let url = broker.url.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(broker = %url, "nudges: connected to the MQTT broker");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(broker = %url, error = %e, "nudges: MQTT broker unreachable; vehicles fall back to polling");
                        }
                        failing = true;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        Ok(Nudger {
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// Nudges `vin` (at most once delivery; never waits).
    pub fn nudge(&self, vin: &str) {
        let payload = serde_json::json!({
            "vin": vin,
            "at": crate::db::now_text(),
        })
        .to_string();
        if let Err(e) =
            self.client
                .try_publish(topic(&self.prefix, vin), QoS::AtMostOnce, false, payload)
        {
            tracing::debug!(%vin, error = %e, "nudge not sent");
        }
    }
}
