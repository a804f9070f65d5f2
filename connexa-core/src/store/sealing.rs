//! Secrets at rest: node passwords and SOCKS5 credentials sealed in the
//! database with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`).
//!
//! A sealed value is `\x01cx1:<key id>:<hex of nonce and ciphertext>`. The
//! leading control character cannot start a stored secret otherwise (the
//! import and every API refuse control characters), so plaintext values from
//! before a key was configured are read as they are, and sealed and plain
//! values can live side by side until `connexa secrets rotate` seals them
//! all. The key id (the first 8 hex digits of SHA-256 of the key) is stored
//! with each value, so a store can hold one current key and older ones
//! during a rotation. The column name is bound into each value (associated
//! data): a value copied into another column does not open.

use std::collections::BTreeMap;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::ports::StoreError;

/// The prefix of a sealed value.
pub(crate) const SEALED_PREFIX: &str = "\u{1}cx1:";

/// A 32-byte key and its id.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("cannot read the secrets key file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The text is not 64 hex digits.
    #[error(
        "{origin}: a secrets key is 64 hex digits (32 bytes); create one with `connexa secrets keygen FILE`"
    )]
    Format {
        /// Where the text came from.
        origin: String,
    },
    /// Others may read the key file.
    #[error(
        "the secrets key file {path} is readable by others (mode {mode:04o}): chmod 600 {path}"
    )]
    Mode {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
}

impl SecretKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        let digest = Sha256::digest(bytes);
        SecretKey {
            id: hex::encode(&digest[..4]),
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// A new random key (what `connexa secrets keygen` writes).
    pub fn generate() -> ([u8; 32], SecretKey) {
        let bytes: [u8; 32] = rand::random();
        let key = SecretKey::from_bytes(&bytes);
        (bytes, key)
    }

    /// A key from 64 hex digits (white space around them ignored); `origin`
    /// names where the text came from in the error.
    ///
    /// # Errors
    /// The text is not 64 hex digits.
    pub fn from_hex(text: &str, origin: &str) -> Result<SecretKey, KeyError> {
        let bad = || KeyError::Format {
            origin: origin.to_owned(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    /// Reads a key file (64 hex digits), which others must not be able to read.
    ///
    /// # Errors
    /// The file cannot be read, is readable by group or others, or holds no key.
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: shown.clone(),
            error,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(m) = std::fs::metadata(path) {
                let mode = m.permissions().mode() & 0o7777;
                if mode & 0o007 != 0 {
                    return Err(KeyError::Mode { path: shown, mode });
                }
            }
        }
        SecretKey::from_hex(&text, &shown)
    }

    /// The key's id: the first 8 hex digits of SHA-256 of the key.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The keys a store seals and opens secrets with: the current one (new
/// values are sealed with it; none: stored as plaintext) and older ones that
/// only open values (during a rotation).
#[derive(Debug, Clone, Default)]
pub struct SecretKeys {
    current: Option<SecretKey>,
    old: Vec<SecretKey>,
}

impl SecretKeys {
    /// No key: secrets are stored as plaintext (today's behaviour).
    pub fn none() -> SecretKeys {
        SecretKeys::default()
    }

    /// Seal with `current`; also open values sealed with any of `old`.
    pub fn new(current: Option<SecretKey>, old: Vec<SecretKey>) -> SecretKeys {
        SecretKeys { current, old }
    }

    /// The current key, if any.
    pub fn current(&self) -> Option<&SecretKey> {
        self.current.as_ref()
    }

    /// Whether values sealed with key `id` can be opened.
    pub fn knows(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &str) -> Option<&SecretKey> {
        self.current.iter().chain(&self.old).find(|k| k.id == id)
    }

    /// The ids of every key, current first.
    pub fn ids(&self) -> Vec<String> {
        self.current
            .iter()
            .chain(&self.old)
            .map(|k| k.id.clone())
            .collect()
    }

    /// `plain` as it is stored in `column`: sealed with the current key, or
    /// as it is without one.
    pub(crate) fn seal(&self, column: &str, plain: &str) -> String {
        let Some(key) = &self.current else {
            return plain.to_owned();
        };
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        // Encrypting into a Vec cannot fail for inputs this small.
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: column.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = String::with_capacity(SEALED_PREFIX.len() + 9 + 2 * (24 + sealed.len()));
        out.push_str(SEALED_PREFIX);
        out.push_str(&key.id);
        out.push(':');
        out.push_str(&hex::encode(nonce_bytes));
        out.push_str(&hex::encode(sealed));
        out
    }

    /// The plaintext of a stored value of `column`.
    ///
    /// # Errors
    /// The value is sealed with a key this store does not have, or does not
    /// open (tampered with, or moved from another column).
    pub(crate) fn open(&self, column: &str, stored: &str) -> Result<String, StoreError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let corrupt = || StoreError::Backend(format!("a sealed {column} value is damaged"));
        let (id, body) = rest.split_once(':').ok_or_else(corrupt)?;
        let key = self.key(id).ok_or_else(|| unknown_key(id, self))?;
        let bytes = hex::decode(body).map_err(|_| corrupt())?;
        if bytes.len() < 24 {
            return Err(corrupt());
        }
        let (nonce, ct) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| corrupt())?;
        let plain = key
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: column.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

fn unknown_key(id: &str, keys: &SecretKeys) -> StoreError {
    let have = keys.ids();
    StoreError::Backend(if have.is_empty() {
        format!(
            "the database holds secrets sealed with key {id} and no key is configured: \
             set [secrets] key_file (or $CONNEXA_SECRET_KEY)"
        )
    } else {
        format!(
            "the database holds secrets sealed with key {id}, which is not configured \
             (configured: {}): a wrong key file?",
            have.join(", ")
        )
    })
}

/// How the stored secrets are kept: counts per key id (`None`: plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SealingStatus {
    /// Values stored as plaintext.
    pub plaintext: u64,
    /// Values sealed, per key id.
    pub sealed: BTreeMap<String, u64>,
}

/// Checks that `keys` open every sealed value's key id in `status`.
pub(crate) fn check_keys(keys: &SecretKeys, status: &SealingStatus) -> Result<(), StoreError> {
    for id in status.sealed.keys() {
        if !keys.knows(id) {
            return Err(unknown_key(id, keys));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes(&[b; 32])
    }

    #[test]
    fn sealed_values_open_with_their_key_and_column_only() {
        let keys = SecretKeys::new(Some(key(1)), vec![]);
        let s = keys.seal("nodes.password", "hunter2");
        assert!(s.starts_with(SEALED_PREFIX), "{s:?}");
        assert!(!s.contains("hunter2"));
        assert_ne!(
            s,
            keys.seal("nodes.password", "hunter2"),
            "a fresh nonce each time"
        );
        assert_eq!(keys.open("nodes.password", &s).unwrap(), "hunter2");
        // Another column: the associated data differs.
        assert!(keys.open("nodes.socks_password", &s).is_err());
        // Another key.
        let other = SecretKeys::new(Some(key(2)), vec![]);
        let e = other.open("nodes.password", &s).unwrap_err().to_string();
        assert!(
            e.contains(key(1).id()) && e.contains("not configured"),
            "{e}"
        );
        // Tampered.
        let mut t = s.clone();
        t.pop();
        t.push(if s.ends_with('0') { '1' } else { '0' });
        assert!(keys.open("nodes.password", &t).is_err());
        // Plaintext passes through; without a key nothing is sealed.
        assert_eq!(keys.open("nodes.password", "plain").unwrap(), "plain");
        assert_eq!(SecretKeys::none().seal("c", "plain"), "plain");
    }

    #[test]
    fn an_old_key_opens_what_it_sealed() {
        let old = SecretKeys::new(Some(key(1)), vec![]);
        let s = old.seal("c", "x");
        let rotating = SecretKeys::new(Some(key(2)), vec![key(1)]);
        assert_eq!(rotating.open("c", &s).unwrap(), "x");
        assert!(rotating.seal("c", "x").contains(key(2).id()));
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(SecretKey::from_hex(&"ab".repeat(32), "t").is_ok());
        assert!(SecretKey::from_hex(&"ab".repeat(31), "t").is_err());
        assert!(SecretKey::from_hex(&"zz".repeat(32), "t").is_err());
        assert_eq!(key(1).id().len(), 8);
    }
}
