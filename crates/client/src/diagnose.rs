//! Why a request failed, in words an operator can act on. reqwest's own message is "error
//! sending request for url (…)"; the cause sits deeper in its chain of sources (an I/O error,
//! a rustls error, an alert from the server). This walks the chain and names the cause —
//! connection refused, a certificate not signed by the trusted CA, a certificate for another
//! name, our client certificate refused, a timeout, a name that does not resolve — with what
//! to check.

use std::error::Error as StdError;

/// One line: the cause and what to check, or the whole chain of messages when the cause is
/// none of the known ones.
pub fn explain(e: &(dyn StdError + 'static)) -> String {
    let mut chain: Vec<&(dyn StdError + 'static)> = vec![e];
    let mut current = e;
    while let Some(next) = current.source() {
        chain.push(next);
        current = next;
    }
    for cause in &chain {
        if let Some(known) = known_cause(*cause) {
            return known;
        }
    }
    // The messages of the chain, each once (wrappers often repeat their source's).
    let mut lines: Vec<String> = Vec::new();
    for cause in chain {
        let line = cause.to_string();
        if !lines.iter().any(|l| l.contains(&line)) {
            lines.push(line);
        }
    }
    lines.join(": ")
}

fn known_cause(e: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls_cause(tls));
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        // rustls errors travel inside I/O errors, sometimes nested, which `source()` skips.
        if let Some(inner) = io.get_ref() {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(known) = known_cause(inner) {
                return Some(known);
            }
        }
        return io_cause(io);
    }
    if let Some(r) = e.downcast_ref::<reqwest::Error>() {
        if r.is_timeout() {
            return Some(
                "timed out: the server did not answer in time (check the address and that \
                 nothing drops the traffic)"
                    .into(),
            );
        }
    }
    let text = e.to_string();
    if text.contains("dns error") || text.contains("failed to lookup address") {
        return Some(format!(
            "the server's name does not resolve ({text}): check the host name in the URL"
        ));
    }
    None
}

fn io_cause(io: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind::*;
    Some(match io.kind() {
        ConnectionRefused => "connection refused: nothing listens there — is the server running, \
                              and are the host and port in the URL right?"
            .into(),
        TimedOut => {
            "timed out connecting: check the address and that nothing drops the traffic".into()
        }
        ConnectionReset | ConnectionAborted | UnexpectedEof => {
            "the server closed the connection during the TLS handshake: it may want a client \
             certificate (check `client_cert`), or refused this one (revoked, or not from its CA)"
                .into()
        }
        HostUnreachable | NetworkUnreachable => {
            format!("no route to the server ({io}): check the network and the address")
        }
        _ => return None,
    })
}

fn tls_cause(tls: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server's certificate is not signed by a CA this client trusts: check `ca` \
                 (the fleet CA, pki/ca.pem in the server's data dir)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for this host name: use a name the \
                 certificate lists (`rampart pki init --server-name`), or fix the URL"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired (or this clock is wrong): renew it, or \
                 check the time"
                    .into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (or this clock is wrong): check the \
                 time"
                    .into()
            }
            CertificateError::Revoked => "the server's certificate is revoked".into(),
            other => format!("the server's certificate is not acceptable: {other:?}"),
        },
        Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure => {
                "the server wants a client certificate and got none it accepts: check \
                 `client_cert` (`rampart pki issue --vin …`)"
                    .into()
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown => {
                "the server refused this client certificate (not issued by its CA): check \
                 `client_cert`"
                    .into()
            }
            AlertDescription::CertificateRevoked => {
                "the server refused this client certificate: it is revoked (`rampart pki \
                 revoked`)"
                    .into()
            }
            AlertDescription::CertificateExpired => {
                "the server refused this client certificate: it has expired".into()
            }
            other => format!("the server ended the TLS handshake: {other:?}"),
        },
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_says_so_and_what_to_check() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let line = explain(&e);
        assert!(line.starts_with("connection refused"), "{line}");
        assert!(line.contains("is the server running"), "{line}");
    }

    #[test]
    fn a_tls_cause_inside_an_io_error_is_found() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = std::io::Error::other(tls);
        assert!(explain(&e).contains("not signed by a CA this client trusts"));
    }

    #[test]
    fn an_unknown_cause_keeps_every_message_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "sending request")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(explain(&e), "sending request: disk on fire");
    }
}
