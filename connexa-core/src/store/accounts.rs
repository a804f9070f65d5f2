//! Operator accounts and their sign-in sessions ([`AccountStore`]), and the
//! password rules and hashing every frontend uses.
//!
//! * Passwords are hashed with Argon2id at OWASP's parameters
//!   ([`ARGON2_MEMORY_KIB`], [`ARGON2_ITERATIONS`], [`ARGON2_LANES`]) and a
//!   random 16-byte salt; the PHC string (`$argon2id$v=19$m=...`) is stored,
//!   so parameters can change later without invalidating old hashes.
//! * [`check_password`] holds the rules: at least [`MIN_PASSWORD_CHARS`]
//!   characters, at most [`MAX_PASSWORD_BYTES`] bytes, no control character.
//! * [`authenticate`] costs one Argon2 verification whether the name exists
//!   or not (an unknown name is checked against a dummy hash), so the time of
//!   an answer does not tell which names exist; the comparison itself is the
//!   argon2 crate's constant-time one.
//! * Sessions are stored by the SHA-256 of their id, like API tokens.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::convert::{from_ms, ms};
use super::entity::{sessions, users};
use super::{SqlStore, db_err};
use crate::ports::{Account, AccountId, AccountStore, Role, Session, StoreError};

/// Argon2id memory cost, KiB (OWASP: 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id iterations (OWASP: 2).
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id parallelism (OWASP: 1).
pub const ARGON2_LANES: u32 = 1;
/// Shortest password accepted, characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, bytes (hashing is linear in the length).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest account name, characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Why a name or password is refused, or hashing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// More than [`MAX_PASSWORD_BYTES`] bytes.
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// A control character (newline, tab, NUL, ...).
    #[error("the password must not contain control characters")]
    ControlChar,
    /// The account name is not 1 to [`MAX_NAME_CHARS`] letters, digits or `._-@`.
    #[error("an account name is 1 to {MAX_NAME_CHARS} letters, digits, '.', '_', '-' or '@'")]
    BadName,
    /// The system's random source or the hasher failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// `Ok` if `password` follows the rules (see the module docs).
pub fn check_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError::ControlChar);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// `Ok` if `name` is a valid account name: 1 to [`MAX_NAME_CHARS`] ASCII
/// letters, digits, `.`, `_`, `-` or `@`.
pub fn check_name(name: &str) -> Result<(), PasswordError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(PasswordError::BadName)
    }
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The Argon2id PHC string of `password` with a fresh random salt. Checks
/// [`check_password`] first. CPU-heavy (tens of milliseconds): call it off
/// the async executor (e.g. `spawn_blocking`).
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_password(password)?;
    hash_unchecked(password)
}

fn hash_unchecked(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// `true` if `password` matches the PHC string `phc` (constant-time
/// comparison; a malformed `phc` never matches). CPU-heavy, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, computed once: what an unknown name is
/// checked against so that it costs as much as a known one.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut b = [0u8; 24];
        let _ = getrandom::fill(&mut b);
        let pw: String = b.iter().map(|x| format!("{x:02x}")).collect();
        hash_unchecked(&pw).unwrap_or_default()
    })
}

/// A random password of 24 characters from an unambiguous alphabet
/// (about 134 bits), for `--init-admin` and `user add` without a password.
pub fn generate_password() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| PasswordError::Hash(e.to_string()))?;
        // Rejection sampling: no modulo bias.
        let limit = 256 - 256 % ALPHABET.len();
        for x in b {
            if (x as usize) < limit && out.len() < 24 {
                out.push(ALPHABET[x as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// What [`authenticate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// The name exists, the password matches and the account is enabled.
    Accepted(Account),
    /// The password matches but the account is disabled.
    Disabled(Account),
    /// No such name, or the wrong password (the two are not told apart).
    Refused,
}

/// Checks `name` and `password`: one Argon2 verification whether or not the
/// name exists (run on the blocking thread pool).
///
/// # Errors
/// The store fails.
pub async fn authenticate(
    store: &dyn AccountStore,
    name: &str,
    password: &str,
) -> Result<SignIn, StoreError> {
    let found = store.account_by_name(name).await?;
    let (hash, known) = match &found {
        Some((_, h)) => (h.clone(), true),
        None => (dummy_hash().to_owned(), false),
    };
    let pw = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
    Ok(match found {
        Some((a, _)) if ok && known && a.disabled => SignIn::Disabled(a),
        Some((a, _)) if ok && known => SignIn::Accepted(a),
        _ => SignIn::Refused,
    })
}

/// Why an account could not be created or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The name or password breaks the rules.
    #[error(transparent)]
    Rules(#[from] PasswordError),
    /// An account of this name exists.
    #[error("an account named {0:?} exists already")]
    Exists(String),
    /// No account of this name.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks the rules, hashes the password (off the executor) and stores the account.
///
/// # Errors
/// [`AccountError::Rules`], [`AccountError::Exists`], or the store fails.
pub async fn create_account(
    store: &dyn AccountStore,
    name: &str,
    password: &str,
    role: Role,
) -> Result<Account, AccountError> {
    check_name(name)?;
    check_password(password)?;
    if store.account_by_name(name).await?.is_some() {
        return Err(AccountError::Exists(name.to_owned()));
    }
    let hash = hash_blocking(password).await?;
    store
        .create_account(name, &hash, role, Utc::now())
        .await
        .map_err(|e| match e {
            // Created concurrently after the check above: the unique index said no.
            StoreError::Backend(m) if m.to_ascii_lowercase().contains("unique") => {
                AccountError::Exists(name.to_owned())
            }
            e => AccountError::Store(e),
        })
}

/// Checks the rules, hashes `new` and sets it as the password of `id`,
/// ending every session of the account but `keep_session` (a session hash).
///
/// # Errors
/// [`AccountError::Rules`], or the store fails. `Ok(false)`: no such account.
pub async fn change_password(
    store: &dyn AccountStore,
    id: AccountId,
    new: &str,
    keep_session: Option<&str>,
) -> Result<bool, AccountError> {
    let hash = hash_blocking(new).await?;
    Ok(store
        .set_password(id, &hash, keep_session.map(str::to_owned), Utc::now())
        .await?)
}

async fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))?
}

/// A row as an account. An unknown role (written by a newer version) grants
/// the least: `viewer`.
fn account(m: users::Model) -> (Account, String) {
    let role = m.role.parse().unwrap_or_else(|_| {
        tracing::warn!(account = m.id, role = %m.role, "unknown account role, treated as viewer");
        Role::Viewer
    });
    (
        Account {
            id: AccountId(m.id),
            name: m.name,
            role,
            disabled: m.disabled,
            created_at: from_ms(m.created_at),
            password_changed_at: m.password_changed_at.map(from_ms),
        },
        m.password_hash,
    )
}

fn session(m: sessions::Model) -> Session {
    Session {
        id: m.id,
        account: AccountId(m.account_id),
        created_at: from_ms(m.created_at),
        last_seen: from_ms(m.last_seen),
        expires_at: from_ms(m.expires_at),
        source: m.source,
    }
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Account, StoreError> {
        let txn = self.begin_write().await?;
        let r = users::ActiveModel {
            name: Set(name.to_owned()),
            password_hash: Set(password_hash.to_owned()),
            created_at: Set(ms(at)),
            role: Set(role.as_str().to_owned()),
            disabled: Set(false),
            password_changed_at: Set(None),
            ..Default::default()
        }
        .insert(&txn.txn)
        .await
        .map_err(db_err)
        .map(|m| account(m).0);
        let r = match r {
            Ok(a) => self
                .audit(
                    &txn.txn,
                    "account_create",
                    Some(format!("account {} ({})", a.name, a.role)),
                    Some(1),
                )
                .await
                .map(|()| a),
            Err(e) => Err(e),
        };
        txn.finish(r).await
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<(Account, String)>, StoreError> {
        Ok(users::Entity::find()
            .filter(users::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(account))
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<(Account, String)>, StoreError> {
        Ok(users::Entity::find_by_id(id.0)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(account))
    }

    async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(users::Entity::find()
            .order_by_asc(users::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|m| account(m).0)
            .collect())
    }

    async fn set_password(
        &self,
        id: AccountId,
        password_hash: &str,
        keep_session: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let r: Result<bool, StoreError> = async {
            let changed = users::Entity::update_many()
                .col_expr(users::Column::PasswordHash, Expr::value(password_hash))
                .col_expr(users::Column::PasswordChangedAt, Expr::value(ms(at)))
                .filter(users::Column::Id.eq(id.0))
                .exec(&txn.txn)
                .await
                .map_err(db_err)?
                .rows_affected
                > 0;
            if !changed {
                return Ok(false);
            }
            let mut del =
                sessions::Entity::delete_many().filter(sessions::Column::AccountId.eq(id.0));
            if let Some(keep) = keep_session {
                del = del.filter(sessions::Column::TokenHash.ne(keep));
            }
            let ended = del.exec(&txn.txn).await.map_err(db_err)?.rows_affected;
            self.audit(
                &txn.txn,
                "account_passwd",
                Some(format!(
                    "account id {} ({ended} other sessions ended)",
                    id.0
                )),
                Some(1),
            )
            .await?;
            Ok(true)
        }
        .await;
        txn.finish(r).await
    }

    async fn disable_account(&self, id: AccountId) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let r: Result<bool, StoreError> = async {
            let changed = users::Entity::update_many()
                .col_expr(users::Column::Disabled, Expr::value(true))
                .filter(users::Column::Id.eq(id.0))
                .filter(users::Column::Disabled.eq(false))
                .exec(&txn.txn)
                .await
                .map_err(db_err)?
                .rows_affected
                > 0;
            if !changed {
                return Ok(false);
            }
            let ended = sessions::Entity::delete_many()
                .filter(sessions::Column::AccountId.eq(id.0))
                .exec(&txn.txn)
                .await
                .map_err(db_err)?
                .rows_affected;
            self.audit(
                &txn.txn,
                "account_disable",
                Some(format!("account id {} ({ended} sessions ended)", id.0)),
                Some(1),
            )
            .await?;
            Ok(true)
        }
        .await;
        txn.finish(r).await
    }

    async fn enable_account(&self, id: AccountId) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let r: Result<bool, StoreError> = async {
            let changed = users::Entity::update_many()
                .col_expr(users::Column::Disabled, Expr::value(false))
                .filter(users::Column::Id.eq(id.0))
                .filter(users::Column::Disabled.eq(true))
                .exec(&txn.txn)
                .await
                .map_err(db_err)?
                .rows_affected
                > 0;
            if changed {
                self.audit(
                    &txn.txn,
                    "account_enable",
                    Some(format!("account id {}", id.0)),
                    Some(1),
                )
                .await?;
            }
            Ok(changed)
        }
        .await;
        txn.finish(r).await
    }

    async fn create_session(
        &self,
        account: &Account,
        session_hash: &str,
        source: Option<String>,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Session, StoreError> {
        let txn = self.begin_write().await?;
        let r: Result<Session, StoreError> = async {
            // The account as it is now, its row locked against a concurrent
            // password change or disable (SQLite: the write transaction
            // already serialises them).
            let mut q = users::Entity::find_by_id(account.id.0);
            if txn.txn.get_database_backend() == sea_orm::DbBackend::Postgres {
                q = q.lock_exclusive();
            }
            let now = q.one(&txn.txn).await.map_err(db_err)?;
            let same = now.is_some_and(|m| {
                !m.disabled && m.password_changed_at == account.password_changed_at.map(ms)
            });
            if !same {
                return Err(StoreError::AccountChanged);
            }
            // Sessions past their absolute expiry are purged as new ones open.
            sessions::Entity::delete_many()
                .filter(sessions::Column::ExpiresAt.lte(ms(at)))
                .exec(&txn.txn)
                .await
                .map_err(db_err)?;
            sessions::ActiveModel {
                token_hash: Set(session_hash.to_owned()),
                account_id: Set(account.id.0),
                created_at: Set(ms(at)),
                last_seen: Set(ms(at)),
                expires_at: Set(ms(expires_at)),
                source: Set(source),
                ..Default::default()
            }
            .insert(&txn.txn)
            .await
            .map_err(db_err)
            .map(session)
        }
        .await;
        txn.finish(r).await
    }

    async fn find_session(
        &self,
        session_hash: &str,
        at: DateTime<Utc>,
        idle: std::time::Duration,
    ) -> Result<Option<(Session, Account)>, StoreError> {
        let Some(s) = sessions::Entity::find()
            .filter(sessions::Column::TokenHash.eq(session_hash))
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(session)
        else {
            return Ok(None);
        };
        let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        if s.expires_at <= at
            || s.last_seen
                .checked_add_signed(idle)
                .is_some_and(|t| t <= at)
        {
            return Ok(None);
        }
        let Some((a, _)) = self.account_by_id(s.account).await? else {
            return Ok(None);
        };
        Ok((!a.disabled).then_some((s, a)))
    }

    async fn touch_session(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        let txn = self.begin_write().await?;
        let r = sessions::Entity::update_many()
            .col_expr(sessions::Column::LastSeen, Expr::value(ms(at)))
            .filter(sessions::Column::Id.eq(id))
            .exec(&txn.txn)
            .await
            .map(|_| ())
            .map_err(db_err);
        txn.finish(r).await
    }

    async fn end_session(&self, session_hash: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let r = sessions::Entity::delete_many()
            .filter(sessions::Column::TokenHash.eq(session_hash))
            .exec(&txn.txn)
            .await
            .map(|r| r.rows_affected > 0)
            .map_err(db_err);
        txn.finish(r).await
    }

    async fn sessions(&self, account: AccountId) -> Result<Vec<Session>, StoreError> {
        Ok(sessions::Entity::find()
            .filter(sessions::Column::AccountId.eq(account.0))
            .order_by_asc(sessions::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(session)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert_eq!(check_password("short"), Err(PasswordError::TooShort));
        assert_eq!(check_password("elevenchars"), Err(PasswordError::TooShort));
        assert!(check_password("twelve chars").is_ok());
        // Characters, not bytes: 12 two-byte characters pass.
        assert!(check_password(&"é".repeat(12)).is_ok());
        assert_eq!(
            check_password(&"é".repeat(11)),
            Err(PasswordError::TooShort)
        );
        assert_eq!(
            check_password("with a\nnewline inside"),
            Err(PasswordError::ControlChar)
        );
        assert_eq!(
            check_password("tab\tis a control char"),
            Err(PasswordError::ControlChar)
        );
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert_eq!(
            check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        );
        for good in ["admin", "a.b-c_d@e", &"n".repeat(MAX_NAME_CHARS)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "ä", "x\n", &"n".repeat(MAX_NAME_CHARS + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_are_salted_argon2id_phc_strings_that_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert_ne!(a, b, "salted");
        assert!(
            a.starts_with(&format!(
                "$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_ITERATIONS},p={ARGON2_LANES}$"
            )),
            "{a}"
        );
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse batterY", &a));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        assert!(!verify_password("anything at all", dummy_hash()));
        assert_eq!(hash_password("short"), Err(PasswordError::TooShort));
    }

    #[test]
    fn generated_passwords_follow_the_rules_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(check_password(&a).is_ok());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
