//! Console accounts and sessions.
//!
//! - Passwords are stored as argon2id PHC strings (the `argon2` crate's defaults, OWASP's
//!   minimum: 19 MiB, 2 passes), never in clear; a wrong name costs the same hash as a wrong
//!   password, so timing does not tell which names exist.
//! - A session is a 256-bit random token in a cookie (`HttpOnly; Secure; SameSite=Strict;
//!   Path=/ui`); the database keeps only its SHA-256, with an absolute expiry.
//! - Every state change carries the session's CSRF token (a second random value, in a hidden
//!   form field), compared in constant time. SameSite=Strict alone would stop cross-site
//!   posts in current browsers; the token also covers old ones and same-site subdomains.
//! - Roles: `viewer` reads; `operator` also acts on campaigns; `security` also acts on
//!   incidents and quarantines vehicles. Neither of the last two implies the other.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::db::{db_err, get_opt_str, get_str, now_text, Db};
use crate::error::{Error, Result};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// Starts, pauses, resumes and cancels campaigns.
    Operator,
    /// Acknowledges and resolves incidents, quarantines and releases vehicles.
    Security,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Security => "security",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "security" => Ok(Role::Security),
            other => Err(Error::BadRequest(format!(
                "role {other:?}: viewer, operator or security"
            ))),
        }
    }
}

/// A console account (without its password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Disabled (no login, sessions ended), if it was.
    pub disabled_at: Option<String>,
}

/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(Error::BadRequest(format!(
            "user name {name:?}: 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| Error::Database("no randomness for a password salt".into()))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::Database(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Database(format!("password hash: {e}")))
}

/// Creates an account.
pub async fn add_user(db: &Db, name: &str, role: Role, password: &str) -> Result<User> {
    validate_name(name)?;
    if password.chars().count() < MIN_PASSWORD {
        return Err(Error::BadRequest(format!(
            "the password is shorter than {MIN_PASSWORD} characters"
        )));
    }
    let hash = hash_password(password)?;
    let at = now_text();
    let done = sqlx::query(
        "INSERT INTO users (name, password, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(&hash)
    .bind(role.as_str())
    .bind(&at)
    .execute(db.pool())
    .await
    .map_err(db_err("add user"))?;
    if done.rows_affected() == 0 {
        return Err(Error::Conflict(format!("user {name} exists")));
    }
    Ok(User {
        name: name.to_owned(),
        role,
        created_at: at,
        disabled_at: None,
    })
}

/// Every account.
pub async fn users(db: &Db) -> Result<Vec<User>> {
    let rows = sqlx::query("SELECT name, role, created_at, disabled_at FROM users ORDER BY name")
        .fetch_all(db.pool())
        .await
        .map_err(db_err("users"))?;
    rows.iter()
        .map(|r| {
            Ok(User {
                name: get_str(r, "name")?,
                role: Role::parse(&get_str(r, "role")?)?,
                created_at: get_str(r, "created_at")?,
                disabled_at: get_opt_str(r, "disabled_at")?,
            })
        })
        .collect()
}

/// Disables an account and ends its sessions.
pub async fn disable_user(db: &Db, name: &str) -> Result<()> {
    let mut tx = db.pool().begin().await.map_err(db_err("begin"))?;
    let done =
        sqlx::query("UPDATE users SET disabled_at = $1 WHERE name = $2 AND disabled_at IS NULL")
            .bind(now_text())
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("disable user"))?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no enabled user {name}")));
    }
    sqlx::query("DELETE FROM sessions WHERE user_name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_err("end sessions"))?;
    tx.commit().await.map_err(db_err("commit"))
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Who.
    pub user: String,
    /// Their role.
    pub role: Role,
    /// The token state changes must carry.
    pub csrf: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Database("no randomness for a session".into()))?;
    Ok(hex::encode(bytes))
}

fn token_hash(token: &str) -> String {
    hex::encode(rampart_core::hash::sha256(token.as_bytes()))
}

/// A fixed hash checked when the name is unknown, so both failures cost one argon2 run.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3Jw2cK0aWqyE8wgVZtI6vQ4tHkq1m9dH2wv+ZlUPYCg";

/// Checks a name and password; on success opens a session lasting `lifetime` and returns
/// its cookie token and the session. `None`: wrong name or password, or a disabled account.
pub async fn login(
    db: &Db,
    name: &str,
    password: &str,
    lifetime: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Option<(String, Session)>> {
    let row = sqlx::query("SELECT password, role, disabled_at FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .map_err(db_err("user"))?;
    let (stored, role, disabled) = match &row {
        Some(r) => (
            get_str(r, "password")?,
            Some(get_str(r, "role")?),
            get_opt_str(r, "disabled_at")?.is_some(),
        ),
        None => (DECOY.to_owned(), None, true),
    };
    let parsed = PasswordHash::new(&stored)
        .map_err(|e| Error::Database(format!("stored password hash of {name}: {e}")))?;
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let (true, false, Some(role)) = (matches, disabled, role) else {
        return Ok(None);
    };
    let role = Role::parse(&role)?;
    let token = random_hex()?;
    let csrf = random_hex()?;
    let text = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash(&token))
    .bind(name)
    .bind(&csrf)
    .bind(text(now))
    .bind(text(now + lifetime))
    .execute(db.pool())
    .await
    .map_err(db_err("session"))?;
    // Expired sessions go as new ones come.
    sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(text(now))
        .execute(db.pool())
        .await
        .map_err(db_err("session"))?;
    Ok(Some((
        token,
        Session {
            user: name.to_owned(),
            role,
            csrf,
        },
    )))
}

/// What a session cookie is.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A live session.
    Valid(Session),
    /// It was one, and it expired.
    Expired,
    /// No such session (never, logged out, or the account was disabled).
    Unknown,
}

/// Looks a session token up at `now`.
pub async fn session(db: &Db, token: &str, now: DateTime<Utc>) -> Result<Lookup> {
    let row = sqlx::query(
        "SELECT s.user_name AS user_name, s.csrf AS csrf, s.expires_at AS expires_at, u.role AS role \
         FROM sessions s JOIN users u ON u.name = s.user_name \
         WHERE s.token_hash = $1 AND u.disabled_at IS NULL",
    )
    .bind(token_hash(token))
    .fetch_optional(db.pool())
    .await
    .map_err(db_err("session"))?;
    let Some(r) = row else {
        return Ok(Lookup::Unknown);
    };
    let expired =
        DateTime::parse_from_rfc3339(&get_str(&r, "expires_at")?).map_or(true, |t| t <= now);
    if expired {
        return Ok(Lookup::Expired);
    }
    Ok(Lookup::Valid(Session {
        user: get_str(&r, "user_name")?,
        role: Role::parse(&get_str(&r, "role")?)?,
        csrf: get_str(&r, "csrf")?,
    }))
}

/// Ends a session.
pub async fn logout(db: &Db, token: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash(token))
        .execute(db.pool())
        .await
        .map_err(db_err("logout"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoy_is_a_valid_argon2id_hash_that_matches_nothing_typed() {
        let parsed = PasswordHash::new(DECOY).unwrap();
        assert!(Argon2::default().verify_password(b"", &parsed).is_err());
        assert!(Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_err());
    }

    #[test]
    fn a_stored_password_is_an_argon2id_string_that_verifies_only_the_password() {
        let h = hash_password("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("correct horse"));
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery staple", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"correct horse battery stapl", &parsed)
            .is_err());
    }

    #[test]
    fn csrf_tokens_compare_whole_and_never_empty() {
        let s = Session {
            user: "u".into(),
            role: Role::Viewer,
            csrf: "abc".into(),
        };
        assert!(s.csrf_ok("abc"));
        assert!(!s.csrf_ok("ab"));
        assert!(!s.csrf_ok(""));
    }
}
