//! The rules Rampart enforces, by name: one list for every crate.
//!
//! A rule's name is what a rejection, a security event, an attack indicator and an API answer
//! say, and what an auditor filters on and the attack lab checks. Typed once here, it cannot be
//! spelled two ways in two places: every crate's `rule()` returns a [`Rule`], the server stores
//! [`Rule::as_str`], and the attack lab names the rules it expects as `Rule` values. Names are
//! stable (they are stored); new rules are added, old ones never renamed.

use std::fmt;
use std::str::FromStr;

macro_rules! rules {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// A rule, by its stable name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Rule {
            $($(#[$doc])* $variant,)*
        }

        impl Rule {
            /// Every rule.
            pub const ALL: &'static [Rule] = &[$(Rule::$variant,)*];

            /// The stable name (`hash-mismatch`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Rule::$variant => $name,)*
                }
            }
        }
    };
}

rules! {
    // Metadata and images (TUF, rampart-core).
    /// A document that does not parse as what it must be.
    Malformed = "malformed",
    /// A document of another role than expected (`_type`).
    WrongType = "wrong-type",
    /// A specification version this client does not speak.
    SpecVersion = "spec-version",
    /// Metadata past its expiry.
    Expired = "expired",
    /// A version lower than the trusted one (TUF 5.4.3, 5.5.5, 5.6.5).
    Rollback = "rollback",
    /// The same version as the trusted one, offered as new.
    EqualVersion = "equal-version",
    /// A version other than the one the pinning document names.
    VersionMismatch = "version-mismatch",
    /// Fewer valid signatures from authorised distinct keys than the threshold.
    Threshold = "threshold",
    /// Bytes whose hash differs from the signed one.
    HashMismatch = "hash-mismatch",
    /// Bytes whose length differs from the signed one.
    LengthMismatch = "length-mismatch",
    /// More bytes than signed or allowed (endless data).
    EndlessData = "endless-data",
    /// No hash algorithm this client supports.
    NoSupportedHash = "no-supported-hash",
    /// A key that cannot be used.
    BadKey = "bad-key",
    /// A signature that does not verify.
    BadSignature = "bad-signature",
    /// A role missing from the document that should list it.
    MissingRole = "missing-role",
    /// Steps called out of order (a bug, not an attack).
    Workflow = "workflow",
    /// Something asked for that is not there.
    NotFound = "not-found",
    /// More delegations than a lookup may visit.
    DelegationLimit = "delegation-limit",
    /// A target no trusted role lists.
    TargetNotFound = "target-not-found",
    /// A name that could leave its folder.
    UnsafeName = "unsafe-name",
    // Uptane (rampart-core).
    /// Director targets that delegate.
    DirectorDelegates = "director-delegates",
    /// One ECU listed twice.
    DuplicateEcu = "duplicate-ecu",
    /// An ECU that is not this vehicle's.
    EcuNotInVehicle = "ecu-not-in-vehicle",
    /// A required custom field missing.
    MissingCustom = "missing-custom",
    /// An image for other hardware.
    HardwareIdMismatch = "hardware-id-mismatch",
    /// The director and the image repository disagree on an image.
    DirectorImageMismatch = "director-image-mismatch",
    /// An image older (by release counter) than the one running.
    ReleaseCounterDecreased = "release-counter-decreased",
    /// The director lists nothing for this ECU.
    NoTargetForEcu = "no-target-for-ecu",
    /// Metadata or a receipt for another vehicle.
    WrongVehicle = "wrong-vehicle",
    /// A manifest or report that breaks its rules.
    Manifest = "manifest",
    /// A counter that does not grow (a replay).
    Replay = "replay",
    /// An encrypted chunk that fails authentication.
    DecryptionFailed = "decryption-failed",
    /// An encrypted image that ends early.
    Truncated = "truncated",
    /// A cryptographic primitive failed (RNG, key generation).
    Crypto = "crypto",
    // Transport and storage (rampart-client).
    /// An unexpected HTTP status.
    HttpStatus = "http-status",
    /// Connection, TLS or protocol failure.
    Transport = "transport",
    /// Data sent too slowly (slow retrieval).
    SlowRetrieval = "slow-retrieval",
    /// A local file could not be read or written.
    Io = "io",
    /// A URL that cannot be used.
    BadUrl = "bad-url",
    /// A secret file that others may read or write.
    SecretPermissions = "secret-permissions",
    // The in-vehicle link (rampart-vehicle).
    /// The connection closed before a frame.
    Closed = "closed",
    /// The connection ended inside a frame.
    TruncatedFrame = "truncated-frame",
    /// Not a frame of this protocol.
    GarbageFrame = "garbage-frame",
    /// A frame over its kind's limit.
    OversizedFrame = "oversized-frame",
    /// The ECU's buffer budget is spent.
    MemoryBudget = "memory-budget",
    /// A frame where another was expected.
    UnexpectedFrame = "unexpected-frame",
    /// A frame whose payload does not parse.
    MalformedFrame = "malformed-frame",
    /// More connections than allowed (per address or in total).
    ConnectionFlood = "connection-flood",
    // The vehicle (rampart-vehicle).
    /// A slot could not be written.
    Slot = "slot",
    /// The other side broke the in-vehicle protocol.
    Protocol = "protocol",
    /// The director refused the vehicle's manifest.
    DirectorRefused = "director-refused",
    /// A new image failed to boot and was rolled back.
    BootFailed = "boot-failed",
    /// Bad configuration.
    Config = "config",
    /// An ECU report that does not answer the primary's nonce.
    StaleReport = "stale-report",
    /// An ECU the primary cannot reach.
    EcuUnreachable = "ecu-unreachable",
    /// An install no signed report confirms.
    UnconfirmedInstall = "unconfirmed-install",
    /// A delta for another image than the one the ECU runs (its source differs).
    DeltaSource = "delta-source-mismatch",
    /// A delta that does not build the signed image (corrupt, truncated, unknown format).
    DeltaCorrupt = "delta-corrupt",
    /// An offline bundle entry whose name is not one a bundle may hold (path traversal, a
    /// link, a device, an unknown place).
    BundleEntry = "bundle-entry",
    /// An offline bundle that is not a whole, readable bundle (truncated, over its limits).
    BundleMalformed = "bundle-malformed",
    /// More distinct indicators than an ECU keeps.
    IndicatorOverflow = "indicator-overflow",
    // The diagnostic link: UDS (ISO 14229) over DoIP (ISO 13400) (rampart-vehicle).
    /// Not a DoIP message, or one the entity does not take (generic header NACK).
    DoipFrame = "doip-frame",
    /// Routing activation from a tester address the ECU does not serve.
    UnknownTester = "unknown-tester",
    /// A programming service without security access (UDS NRC 0x33).
    SecurityAccessDenied = "security-access-denied",
    /// A wrong SecurityAccess key (NRC 0x35, 0x36 once the attempts are spent).
    InvalidSecurityKey = "invalid-security-key",
    /// A SecurityAccess request while the delay after failed attempts runs (NRC 0x37).
    SecurityDelay = "security-delay",
    /// A TransferData block out of sequence (NRC 0x73).
    BlockSequence = "block-sequence",
    /// A diagnostic request out of order or malformed (NRC 0x13, 0x24, 0x31, 0x70, 0x71).
    DiagnosticRequest = "diagnostic-request",
    /// A legacy ECU answered the gateway with a negative response it did not expect.
    DiagnosticRefused = "diagnostic-refused",
    // The server (rampart-server).
    /// A database failure (or stored data we did not write).
    Database = "database",
    /// A request that is well formed but not acceptable.
    BadRequest = "bad-request",
    /// Something that already exists.
    Conflict = "conflict",
    /// Missing or wrong credentials.
    Unauthorized = "unauthorized",
    /// Not allowed.
    Forbidden = "forbidden",
    /// A vehicle the director does not know.
    UnknownVehicle = "unknown-vehicle",
    /// A vehicle taken out of the fleet (`rampart admin remove`).
    VehicleRemoved = "vehicle-removed",
    /// A certificate used for another vehicle.
    VinMismatch = "vin-mismatch",
    /// A vehicle route without a client certificate.
    ClientCertificateRequired = "client-certificate-required",
    /// A revoked vehicle certificate.
    CertificateRevoked = "certificate-revoked",
    /// More requests than a client's rate.
    RateLimited = "rate-limited",
    /// A counter the database cannot hold exactly.
    CounterOutOfRange = "counter-out-of-range",
    /// A vehicle-reported indicator whose rule is not a rule name.
    VehicleReport = "vehicle-report",
    /// A campaign halted on failures that name attack rules.
    CampaignHalted = "campaign-halted",
    /// A TLS client presented a certificate the fleet CA did not sign, or none where one
    /// was required, and the handshake was refused.
    ClientCertificateRefused = "client-certificate-refused",
    /// A console sign-in with a wrong name or password.
    LoginFailed = "login-failed",
    /// A console request without a valid session or CSRF token, or beyond its role.
    ConsoleRefused = "console-refused",
    // Fleet PKI and TLS set-up (rampart-server).
    /// A CA that already exists.
    CaExists = "ca-exists",
    /// A VIN that is not one.
    InvalidVin = "invalid-vin",
    /// A server name that cannot be certified.
    InvalidServerName = "invalid-server-name",
    /// A validity period that cannot be certified.
    InvalidValidity = "invalid-validity",
    /// An empty admin token.
    EmptyAdminToken = "empty-admin-token",
    /// A certificate that could not be made.
    Certificate = "certificate",
    /// The system's random source failed.
    Random = "random",
    /// A PKI file missing or wrong.
    PkiFile = "pki-file",
    /// A TLS configuration rustls refused.
    TlsConfig = "tls-config",
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rule name")]
pub struct UnknownRule(pub String);

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(s: &str) -> Result<Rule, UnknownRule> {
        Rule::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRule(s.to_owned()))
    }
}

impl AsRef<str> for Rule {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for Rule {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Rule> for &str {
    fn eq(&self, other: &Rule) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<str> for Rule {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_kebab_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for rule in Rule::ALL {
            let name = rule.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !name.starts_with('-')
                    && !name.ends_with('-'),
                "{name} is not kebab-case"
            );
            assert_eq!(name.parse::<Rule>(), Ok(*rule));
            assert_eq!(rule.to_string(), name);
        }
        assert!("no-such-rule".parse::<Rule>().is_err());
        assert!(Rule::Rollback == "rollback" && "threshold" == Rule::Threshold);
    }
}
