//! The fleet PKI: one fleet CA that signs the server's TLS certificate and one client
//! certificate per vehicle, plus the admin credential of the HTTPS API.
//!
//! Uptane leaves transport security to the deployment (Uptane Standard 5.4: "a secure
//! channel"); Rampart uses mutual TLS so that the director knows which vehicle is asking
//! before it reads a single byte of a manifest. The VIN a vehicle may speak for is the
//! subject CN of its certificate (also carried as the SAN URI `urn:rampart:vin:<VIN>`).
//!
//! Everything lives in one directory (see [`PkiFiles`]):
//!
//! | file             | holds                                     | mode |
//! |------------------|-------------------------------------------|------|
//! | `ca.pem`         | fleet CA certificate (self-signed)        | 0644 |
//! | `ca-key.pem`     | fleet CA private key (PKCS#8, P-256)      | 0600 |
//! | `server.pem`     | TLS server certificate, signed by the CA  | 0644 |
//! | `server-key.pem` | its private key                           | 0600 |
//! | `admin-token`    | 32 random bytes, hex, for admin routes    | 0600 |
//!
//! Invariants: every file is written atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old file or the new one; private keys are never
//! readable by other users, whatever the umask; an existing fleet CA is never replaced by
//! [`init`] — replacing it strands every vehicle certificate, so that takes
//! [`danger_reinit`].

use rampart_core::rule::Rule;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// Subject CN of the fleet CA.
pub const CA_COMMON_NAME: &str = "Rampart Fleet CA";
/// Subject CN of the TLS server certificate (clients check the SANs, not this).
pub const SERVER_COMMON_NAME: &str = "Rampart server";
/// Prefix of the SAN URI that carries a vehicle's VIN.
pub const VIN_URI_PREFIX: &str = "urn:rampart:vin:";
/// Longest VIN accepted (ISO 3779 VINs have 17 characters; fleets also name test benches).
pub const MAX_VIN_LEN: usize = 32;

/// How far back `notBefore` is set, so that a vehicle whose clock runs a little behind
/// still accepts a certificate issued a moment ago.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);
/// Mode of private keys and the admin token.
const SECRET_MODE: u32 = 0o600;
/// Mode of certificates (public).
const PUBLIC_MODE: u32 = 0o644;
/// Mode of a PKI directory that [`init`] creates.
const DIR_MODE: u32 = 0o700;

/// Result alias of the PKI.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a PKI operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`init`] found a fleet CA already in place; replacing it would strand every vehicle
    /// certificate it signed.
    #[error("{}: a fleet CA already exists; refusing to replace it (use danger_reinit to start a new PKI)", path.display())]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },

    /// A VIN that may not name a vehicle certificate.
    #[error("invalid VIN {vin}: {reason}")]
    InvalidVin {
        /// The VIN as given, quoted and shortened for display.
        vin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A server name that cannot go into the server certificate's SANs.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A validity period that is empty or reversed.
    #[error("invalid validity: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },

    /// A file of the PKI could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A file of the PKI does not hold what it should (bad PEM, wrong key type…).
    #[error("{}: malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// The admin token file is empty.
    #[error("{}: the admin token is empty", path.display())]
    EmptyAdminToken {
        /// The token file.
        path: PathBuf,
    },

    /// Generating a key or signing a certificate failed.
    #[error("cannot create {what}: {reason}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The reason given by rcgen.
        reason: String,
    },

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// A secret file (key, token) is accessible to others, or its metadata unreadable.
    #[error(transparent)]
    Secret(#[from] rampart_client::store::SecretFileError),
}

impl Error {
    /// A short stable identifier of the rule that failed, for logs and event stores.
    pub fn rule(&self) -> Rule {
        match self {
            Error::CaExists { .. } => Rule::CaExists,
            Error::InvalidVin { .. } => Rule::InvalidVin,
            Error::InvalidServerName { .. } => Rule::InvalidServerName,
            Error::InvalidValidity { .. } => Rule::InvalidValidity,
            Error::Io { .. } => Rule::Io,
            Error::Malformed { .. } => Rule::Malformed,
            Error::EmptyAdminToken { .. } => Rule::EmptyAdminToken,
            Error::Certificate { .. } => Rule::Certificate,
            Error::Random => Rule::Random,
            Error::Secret(e) => e.rule(),
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn cert(what: &str) -> impl FnOnce(rcgen::Error) -> Self + '_ {
        move |e| Error::Certificate {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// Paths of the files of a PKI directory. The layout is fixed: [`PkiFiles::in_dir`] names
/// them whether or not they exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiFiles {
    /// The PKI directory.
    pub dir: PathBuf,
    /// Fleet CA certificate (`ca.pem`).
    pub ca_cert: PathBuf,
    /// Fleet CA private key (`ca-key.pem`, 0600).
    pub ca_key: PathBuf,
    /// TLS server certificate (`server.pem`).
    pub server_cert: PathBuf,
    /// TLS server private key (`server-key.pem`, 0600).
    pub server_key: PathBuf,
    /// Admin bearer token (`admin-token`, 0600).
    pub admin_token: PathBuf,
}

impl PkiFiles {
    /// The file paths of the PKI in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        PkiFiles {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            admin_token: dir.join("admin-token"),
        }
    }
}

/// A freshly issued certificate and its private key, both PEM. The key is not stored by the
/// server: it is handed to the vehicle (or its provisioning station) once.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Creates a fleet PKI in `dir` (created with mode 0700 if missing): the fleet CA, a TLS
/// server certificate for `server_names` and the admin token, each valid `validity_days`
/// days. Refuses with [`Error::CaExists`] if `dir` already holds a CA.
///
/// `server_names` become the server certificate's SANs: IP addresses when a name parses as
/// one, DNS names otherwise. No name is added implicitly; a caller serving on loopback
/// passes `localhost` and `127.0.0.1` itself.
pub fn init(dir: &Path, server_names: &[String], validity_days: u32) -> Result<PkiFiles> {
    create_pki(dir, server_names, validity_days, false)
}

/// Like [`init`], but replaces an existing PKI: a new CA, a new server certificate and a new
/// admin token. Every vehicle certificate signed by the old CA stops working, which is why
/// this is a separate, loudly named function.
pub fn danger_reinit(dir: &Path, server_names: &[String], validity_days: u32) -> Result<PkiFiles> {
    create_pki(dir, server_names, validity_days, true)
}

fn create_pki(
    dir: &Path,
    server_names: &[String],
    validity_days: u32,
    replace: bool,
) -> Result<PkiFiles> {
    let files = PkiFiles::in_dir(dir);
    if !replace {
        // Friendly early refusal; the no-clobber write of ca-key.pem below is what closes
        // the race with a concurrent init.
        for path in [&files.ca_key, &files.ca_cert] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(Error::CaExists { path: path.clone() });
            }
        }
    }
    let sans = server_sans(server_names)?;
    let (not_before, not_after) = validity_from_now(validity_days)?;

    // Build everything in memory first, so a failure leaves the directory untouched.
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::cert("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = distinguished_name(CA_COMMON_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    ca_params.serial_number = Some(random_serial()?);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(Error::cert("CA certificate"))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let server_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::cert("server key"))?;
    let mut server_params = CertificateParams::default();
    server_params.distinguished_name = distinguished_name(SERVER_COMMON_NAME);
    server_params.subject_alt_names = sans;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    server_params.serial_number = Some(random_serial()?);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(Error::cert("server certificate"))?;

    let mut token = [0u8; 32];
    aws_lc_rs::rand::fill(&mut token).map_err(|_| Error::Random)?;
    let token_hex = format!("{}\n", hex::encode(token));

    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    // The CA key goes first and, unless replacing, without clobbering: of two concurrent
    // inits exactly one wins, and the loser has written nothing that matters.
    let ca_key_pem = ca_key.serialize_pem();
    if replace {
        write_atomic(&files.ca_key, ca_key_pem.as_bytes(), SECRET_MODE)?;
    } else {
        write_atomic_new(&files.ca_key, ca_key_pem.as_bytes(), SECRET_MODE)?;
    }
    write_atomic(&files.ca_cert, ca_cert.pem().as_bytes(), PUBLIC_MODE)?;
    write_atomic(
        &files.server_key,
        server_key.serialize_pem().as_bytes(),
        SECRET_MODE,
    )?;
    write_atomic(
        &files.server_cert,
        server_cert.pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    write_atomic(&files.admin_token, token_hex.as_bytes(), SECRET_MODE)?;
    Ok(files)
}

/// Issues a vehicle's client certificate: a new P-256 key, subject CN = `vin`, SAN URI
/// `urn:rampart:vin:<vin>`, clientAuth only, signed by the fleet CA in `dir`, valid for
/// `validity_days` days (but never beyond the CA's own expiry).
pub fn issue_vehicle_cert(dir: &Path, vin: &str, validity_days: u32) -> Result<IssuedCert> {
    let (not_before, not_after) = validity_from_now(validity_days)?;
    issue(dir, vin, not_before, not_after)
}

/// Like [`issue_vehicle_cert`] with an explicit validity period, e.g. to align a
/// certificate with a service contract, or to test that expired certificates are refused.
/// `not_after` is still capped at the CA's expiry.
pub fn issue_vehicle_cert_valid_between(
    dir: &Path,
    vin: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<IssuedCert> {
    issue(
        dir,
        vin,
        OffsetDateTime::from(not_before),
        OffsetDateTime::from(not_after),
    )
}

fn issue(
    dir: &Path,
    vin: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<IssuedCert> {
    validate_vin(vin)?;
    let files = PkiFiles::in_dir(dir);
    let ca_pem = read_to_string(&files.ca_cert)?;
    rampart_client::store::check_secret_permissions(&files.ca_key)?;
    let ca_key_pem = read_to_string(&files.ca_key)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| Error::Malformed {
        path: files.ca_key.clone(),
        reason: e.to_string(),
    })?;
    let ca_not_after = ca_expiry(&files.ca_cert, &ca_pem)?;
    let not_after = not_after.min(ca_not_after);
    if not_after <= not_before {
        return Err(Error::InvalidValidity {
            reason: format!(
                "notAfter {not_after} is not later than notBefore {not_before} \
                 (notAfter is capped at the CA's expiry {ca_not_after})"
            ),
        });
    }
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(|e| Error::Malformed {
        path: files.ca_cert.clone(),
        reason: e.to_string(),
    })?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::cert("vehicle key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(vin);
    let uri = format!("{VIN_URI_PREFIX}{vin}")
        .try_into()
        .map_err(Error::cert("vehicle certificate SAN"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(Error::cert("vehicle certificate"))?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Checks that `vin` is a vehicle identification number as ISO 3779 writes it: 17
/// characters, digits and capital letters except I, O and Q (they read as 1 and 0). What
/// registration, `rampart pki issue` and `rampart provision` take; [`validate_vin`], the
/// safety check every VIN passes before it reaches a file name or a certificate, is wider.
pub fn validate_iso_vin(vin: &str) -> Result<()> {
    validate_vin(vin)?;
    let ok = vin.len() == 17
        && vin.bytes().all(|b| {
            b.is_ascii_digit() || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'O' | b'Q'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidVin {
            vin: shorten_for_display(vin),
            reason: "a VIN has 17 characters: digits and capital letters except I, O and Q \
                     (ISO 3779)"
                .to_owned(),
        })
    }
}

/// Checks that `vin` may name a vehicle: 1 to [`MAX_VIN_LEN`] characters of `A-Z`, `a-z`,
/// `0-9` and `-`. The VIN ends up in certificates, URLs, log lines and file names, so
/// nothing else (no `/`, `.`, spaces or control characters) is let through.
pub fn validate_vin(vin: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidVin {
        vin: shorten_for_display(vin),
        reason,
    };
    if vin.is_empty() {
        return Err(invalid("empty".to_owned()));
    }
    if vin.len() > MAX_VIN_LEN {
        return Err(invalid(format!(
            "{} bytes long, at most {MAX_VIN_LEN} allowed",
            vin.len()
        )));
    }
    if let Some(bad) = vin
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(invalid(format!(
            "character {bad:?} is not allowed (only A-Z, a-z, 0-9 and '-')"
        )));
    }
    Ok(())
}

/// The serial of a PEM certificate as revocations name it: lower-case hex of the DER
/// integer's bytes.
pub fn certificate_serial(cert_pem: &str) -> Result<String> {
    let malformed = |reason: String| Error::Malformed {
        path: PathBuf::from("(certificate)"),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| malformed(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| malformed(e.to_string()))?;
    Ok(hex::encode(cert.raw_serial()))
}

/// Reads the admin token of the PKI in `dir` (surrounding whitespace removed), refusing a
/// token file others can access.
pub fn load_admin_token(dir: &Path) -> Result<String> {
    let path = PkiFiles::in_dir(dir).admin_token;
    rampart_client::store::check_secret_permissions(&path)?;
    let token = read_to_string(&path)?.trim().to_owned();
    if token.is_empty() {
        return Err(Error::EmptyAdminToken { path });
    }
    Ok(token)
}

/// Whether `presented` equals the admin token `expected`, in constant time. Both sides are
/// hashed with SHA-256 first so that neither the length nor a common prefix leaks through
/// timing. An empty `expected` never matches.
pub fn check_admin_token(expected: &str, presented: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, expected.as_bytes());
    let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, presented.as_bytes());
    expected.as_ref().ct_eq(presented.as_ref()).into()
}

fn server_sans(server_names: &[String]) -> Result<Vec<SanType>> {
    if server_names.is_empty() {
        return Err(Error::InvalidServerName {
            name: String::new(),
            reason: "no server name given; the certificate needs at least one".to_owned(),
        });
    }
    let mut sans = Vec::with_capacity(server_names.len());
    for name in server_names {
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            // Checked by the same rules a TLS client applies to the name it connects to.
            rustls_pki_types::DnsName::try_from(name.as_str()).map_err(|e| {
                Error::InvalidServerName {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            SanType::DnsName(name.clone().try_into().map_err(|e: rcgen::Error| {
                Error::InvalidServerName {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?)
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn validity_from_now(validity_days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if validity_days == 0 {
        return Err(Error::InvalidValidity {
            reason: "validity of 0 days".to_owned(),
        });
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(Duration::days(i64::from(validity_days)))
        .ok_or_else(|| Error::InvalidValidity {
            reason: format!("{validity_days} days from now is out of range"),
        })?;
    Ok((now - CLOCK_SKEW_ALLOWANCE, not_after))
}

fn ca_expiry(path: &Path, ca_pem: &str) -> Result<OffsetDateTime> {
    let malformed = |reason: String| Error::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| malformed(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| malformed(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 128-bit serial (RFC 5280 4.1.2.2: unique per CA, at most 20 octets).
fn random_serial() -> Result<SerialNumber> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| Error::Random)?;
    if let Some(first) = serial.first_mut() {
        // Clear the sign bit and make sure the first octet is not zero, so the DER INTEGER
        // is exactly 16 octets and positive.
        *first = (*first & 0x7f) | 0x01;
    }
    Ok(SerialNumber::from_slice(&serial))
}

fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Writes `contents` to `path` atomically, replacing any existing file.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_parent(path)
}

/// Writes `contents` to `path` atomically, failing with [`Error::CaExists`] if `path`
/// exists (a hard link does not replace its target, unlike a rename).
fn write_atomic_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::CaExists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes and fsyncs a temporary file beside `path`, created with `mode` (and re-set to it,
/// so the umask cannot loosen nor oddly tighten it), and returns its path.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Error::Random)?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(nonce)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Makes the rename or link durable.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Quotes an untrusted string for an error message, cut to a sane length.
fn shorten_for_display(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    if s.chars().count() > MAX_CHARS {
        let head: String = s.chars().take(MAX_CHARS).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_vins_are_17_characters_without_i_o_or_q() {
        for good in [
            "WVWZZZ1JZXW000001",
            "1HGCM82633A004352",
            "WRAMPART000000001",
        ] {
            assert!(validate_iso_vin(good).is_ok(), "{good}");
        }
        for bad in [
            "bad",
            "WVWZZZ1JZXW00000",
            "WVWZZZ1JZXW0000011",
            "WVWZZZ1JZXW00000I",
            "WVWZZZ1JZXW00000O",
            "WVWZZZ1JZXW00000Q",
            "wvwzzz1jzxw000001",
            "WVWZZZ1JZXW-00001",
        ] {
            let err = validate_iso_vin(bad).unwrap_err();
            assert_eq!(err.rule(), "invalid-vin", "{bad}");
            assert!(err.to_string().contains("ISO 3779"), "{bad}: {err}");
        }
    }

    #[test]
    fn vin_rules() {
        assert!(validate_vin("WVWZZZ1JZXW000001").is_ok());
        assert!(validate_vin("bench-07").is_ok());
        assert!(validate_vin(&"A".repeat(MAX_VIN_LEN)).is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "a b",
            "a.b",
            "é",
            "a\n",
            &"A".repeat(MAX_VIN_LEN + 1),
        ] {
            let err = validate_vin(bad).unwrap_err();
            assert_eq!(err.rule(), "invalid-vin", "{bad:?}");
        }
    }

    #[test]
    fn long_vin_is_shortened_in_the_error() {
        let err = validate_vin(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn admin_token_comparison() {
        assert!(check_admin_token("abc", "abc"));
        assert!(!check_admin_token("abc", "abd"));
        assert!(!check_admin_token("abc", "abcd"));
        assert!(!check_admin_token("abc", ""));
        assert!(!check_admin_token("", ""));
    }

    #[test]
    fn server_names_become_ip_or_dns_sans() {
        let sans = server_sans(&[
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        assert_eq!(sans.len(), 3);
        assert!(matches!(sans[1], SanType::IpAddress(_)));
        assert!(server_sans(&[]).is_err());
        assert!(server_sans(&["bad name!".to_owned()]).is_err());
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
    }
}
