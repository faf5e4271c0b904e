//! "Check in now" nudges over MQTT: the server publishes one on a vehicle's topic when the
//! director has something new for it; the vehicle, subscribed, checks in early instead of
//! waiting for its next poll. A nudge carries no authority — it names no update and is not
//! signed: the worst a forged or replayed one can do is make a vehicle check in early, and
//! the vehicle bounds how often that happens. Polling stays the fallback.
//!
//! The broker is any MQTT 3.1.1 broker (Mosquitto in tests). Topics: `PREFIX/VIN/nudge`
//! (`rampart/vehicles/VIN/nudge` by default); the broker's ACL lets each vehicle read only
//! its own (see `docs/deployment.md`). The client is rumqttc, a maintained MQTT client; TLS
//! by rustls with the fleet CA, optionally with the vehicle's client certificate.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Topic prefix of nudges unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "rampart/vehicles";

/// The topic of `vin`'s nudges.
pub fn topic(prefix: &str, vin: &str) -> String {
    format!("{}/{vin}/nudge", prefix.trim_end_matches('/'))
}

/// Where the broker is and how to talk to it.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    /// `mqtt://HOST:PORT` (plain, loopback and labs) or `mqtts://HOST:PORT` (TLS).
    pub url: String,
    /// PEM CA certificate(s) to trust for `mqtts` (the fleet CA; system roots otherwise
    /// unavailable: give it).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and key (the broker can take the VIN from it).
    pub identity_pem: Option<Vec<u8>>,
    /// User name and password, if the broker asks for them.
    pub credentials: Option<(String, String)>,
}

/// A broker URL or TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("MQTT broker {url}: {why}")]
pub struct BrokerError {
    url: String,
    why: String,
}

impl Broker {
    /// Connection options for a client named `client_id`.
    pub fn options(&self, client_id: &str) -> Result<MqttOptions, BrokerError> {
        let bad = |why: String| BrokerError {
            url: self.url.clone(),
            why,
        };
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("give mqtt://HOST:PORT or mqtts://HOST:PORT".into()));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(format!("{p:?} is not a port")))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad("no host".into()));
        }
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if tls {
            let config = self.tls_config().map_err(|e| bad(e.to_string()))?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        Ok(options)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, Box<dyn std::error::Error>> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = self
            .ca_pem
            .as_deref()
            .ok_or("mqtts needs the CA certificate to trust")?;
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(match &self.identity_pem {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_slice(pem)?;
                builder.with_client_auth_cert(certs, key)?
            }
            None => builder.with_no_client_auth(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_urls() {
        assert_eq!(
            topic("rampart/vehicles/", "V1"),
            "rampart/vehicles/V1/nudge"
        );
        let b = |url: &str| Broker {
            url: url.into(),
            ..Broker::default()
        };
        let o = b("mqtt://127.0.0.1:1883").options("c").unwrap();
        assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1883));
        assert_eq!(
            b("mqtt://broker").options("c").unwrap().broker_address().1,
            1883
        );
        for (url, why) in [
            ("http://x:1", "give mqtt://"),
            ("mqtt://x:port", "not a port"),
            ("mqtts://x:8883", "CA certificate"),
            ("mqtt://:1883", "no host"),
        ] {
            let e = b(url).options("c").unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
