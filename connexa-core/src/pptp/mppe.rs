//! MPPE key derivation from MS-CHAPv2 (RFC 3079) and the RC4-based key change of
//! RFC 3078 §7.3. The datapath (CCP negotiation, coherency counts, encryption of
//! frames) comes with the tunnel (issue 8); this module holds the key schedule,
//! checked byte for byte against RFC 3079 §3.5.
//!
//! ```
//! use connexa_core::pptp::mppe::{KeyStrength, SessionKey};
//! # let master = [0u8; 16];
//! // The client's keys: send with Magic2, receive with Magic3.
//! let send = SessionKey::initial(&master, KeyStrength::Bits128, true, false);
//! let recv = SessionKey::initial(&master, KeyStrength::Bits128, false, false);
//! assert_ne!(send.key(), recv.key());
//! ```

use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

const MAGIC1: &[u8; 27] = b"This is the MPPE Master Key";
const MAGIC2: &[u8; 84] =
    b"On the client side, this is the send key; on the server side, it is the receive key.";
const MAGIC3: &[u8; 84] =
    b"On the client side, this is the receive key; on the server side, it is the send key.";
const SHA_PAD1: [u8; 40] = [0x00; 40];
const SHA_PAD2: [u8; 40] = [0xF2; 40];

/// GetMasterKey (RFC 3079 §3.4): the first 16 octets of
/// SHA1(PasswordHashHash | NT-Response | "This is the MPPE Master Key").
pub fn get_master_key(password_hash_hash: &[u8; 16], nt_response: &[u8; 24]) -> [u8; 16] {
    let mut h = Sha1::new();
    h.update(password_hash_hash);
    h.update(nt_response);
    h.update(MAGIC1);
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// GetAsymmetricStartKey (RFC 3079 §3.4): the start key of one direction.
/// `len` is 8 (40/56-bit) or 16 (128-bit); larger values are cut to 16.
pub fn get_asymmetric_start_key(
    master_key: &[u8; 16],
    len: usize,
    is_send: bool,
    is_server: bool,
) -> Vec<u8> {
    let magic = if is_send == is_server { MAGIC3 } else { MAGIC2 };
    let mut h = Sha1::new();
    h.update(master_key);
    h.update(SHA_PAD1);
    h.update(magic);
    h.update(SHA_PAD2);
    h.finalize()[..len.min(16)].to_vec()
}

/// GetNewKeyFromSHA (RFC 3078 §7.3 / RFC 3079 §3.1): SHA1(StartKey | pad1 |
/// SessionKey | pad2), first `len` octets (at most 16; inputs are cut to `len`).
pub fn get_new_key_from_sha(start_key: &[u8], session_key: &[u8], len: usize) -> Vec<u8> {
    let len = len.min(16);
    let mut h = Sha1::new();
    h.update(&start_key[..len.min(start_key.len())]);
    h.update(SHA_PAD1);
    h.update(&session_key[..len.min(session_key.len())]);
    h.update(SHA_PAD2);
    h.finalize()[..len].to_vec()
}

/// The MPPE key strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStrength {
    /// 40-bit (8-octet key, first 3 octets fixed to `D1 26 9E`).
    Bits40,
    /// 56-bit (8-octet key, first octet fixed to `D1`).
    Bits56,
    /// 128-bit (16-octet key).
    Bits128,
}

impl KeyStrength {
    /// The key length in octets.
    pub fn len(self) -> usize {
        match self {
            KeyStrength::Bits128 => 16,
            _ => 8,
        }
    }

    /// Never true; keys have a fixed length. (Present for clippy's `len` rule.)
    pub fn is_empty(self) -> bool {
        false
    }

    fn reduce(self, key: &mut [u8]) {
        match self {
            KeyStrength::Bits40 => key[..3].copy_from_slice(&[0xD1, 0x26, 0x9E]),
            KeyStrength::Bits56 => key[0] = 0xD1,
            KeyStrength::Bits128 => {}
        }
    }
}

/// One direction's session key, with the start key it is changed from.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    strength: KeyStrength,
    start: Vec<u8>,
    current: Vec<u8>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({:?}, ***)", self.strength)
    }
}

impl SessionKey {
    /// The initial session key of one direction (RFC 3079 §3.4 and §3.5):
    /// GetNewKeyFromSHA(StartKey, StartKey), then reduced for 40/56-bit.
    pub fn initial(
        master_key: &[u8; 16],
        strength: KeyStrength,
        is_send: bool,
        is_server: bool,
    ) -> Self {
        let start = get_asymmetric_start_key(master_key, strength.len(), is_send, is_server);
        Self::from_start_key(start, strength)
    }

    /// The initial session key from a start key.
    pub fn from_start_key(start: Vec<u8>, strength: KeyStrength) -> Self {
        let mut current = get_new_key_from_sha(&start, &start, strength.len());
        strength.reduce(&mut current);
        SessionKey {
            strength,
            start,
            current,
        }
    }

    /// The current key (what RC4 is keyed with).
    pub fn key(&self) -> &[u8] {
        &self.current
    }

    /// The key change of RFC 3078 §7.3: InterimKey = GetNewKeyFromSHA(StartKey,
    /// SessionKey); SessionKey = RC4(InterimKey, InterimKey); then reduced.
    pub fn change(&mut self) {
        let mut interim = get_new_key_from_sha(&self.start, &self.current, self.strength.len());
        let key = interim.clone();
        // The key length is 8 or 16, always within RC4's 1..=256 range.
        if let Ok(mut rc4) = Rc4::new_from_slice(&key) {
            rc4.apply_keystream(&mut interim);
        }
        self.strength.reduce(&mut interim);
        self.current = interim;
    }
}

/// RC4 keyed with `key` applied to `data` in place (encrypts and decrypts).
pub fn rc4_apply(key: &[u8], data: &mut [u8]) {
    if let Ok(mut rc4) = Rc4::new_from_slice(key) {
        rc4.apply_keystream(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pptp::mschapv2::{hash_nt_password_hash, nt_password_hash};

    const NT_RESPONSE: [u8; 24] = [
        0x82, 0x30, 0x9E, 0xCD, 0x8D, 0x70, 0x8B, 0x5E, 0xA0, 0x8F, 0xAA, 0x39, 0x81, 0xCD, 0x83,
        0x54, 0x42, 0x33, 0x11, 0x4A, 0x3D, 0x85, 0xD6, 0xDF,
    ];

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn master() -> [u8; 16] {
        get_master_key(
            &hash_nt_password_hash(&nt_password_hash("clientPass")),
            &NT_RESPONSE,
        )
    }

    #[test]
    fn rfc3079_master_and_start_keys() {
        assert_eq!(
            master().to_vec(),
            unhex("FD EC E3 71 7A 8C 83 8C B3 88 E5 27 AE 3C DD 31")
        );
        // The RFC's "SendStartKey" is the server's send key (Magic3) ...
        let send128 = get_asymmetric_start_key(&master(), 16, true, true);
        assert_eq!(
            send128,
            unhex("8B 7C DC 14 9B 99 3A 1B A1 18 CB 15 3F 56 DC CB")
        );
        assert_eq!(
            get_asymmetric_start_key(&master(), 8, true, true),
            unhex("8B 7C DC 14 9B 99 3A 1B")
        );
        // ... which is the client's receive key; the client's send key differs.
        assert_eq!(
            get_asymmetric_start_key(&master(), 16, false, false),
            send128
        );
        assert_ne!(
            get_asymmetric_start_key(&master(), 16, true, false),
            send128
        );
        assert_eq!(
            get_asymmetric_start_key(&master(), 16, true, false),
            get_asymmetric_start_key(&master(), 16, false, true)
        );
    }

    #[test]
    fn rfc3079_section_3_5_session_keys_and_sample_messages() {
        let m = master();
        // §3.5.1, 40-bit.
        let k40 = SessionKey::initial(&m, KeyStrength::Bits40, true, true);
        assert_eq!(k40.key(), unhex("D1 26 9E C4 9F A6 2E 3E"));
        let mut msg = b"test message".to_vec();
        rc4_apply(k40.key(), &mut msg);
        assert_eq!(msg, unhex("92 91 37 91 7E 58 03 D6 68 D7 58 98"));
        // §3.5.2, 56-bit key (the RFC's sample ciphertext has a known misprint,
        // so only the key is checked here).
        let k56 = SessionKey::initial(&m, KeyStrength::Bits56, true, true);
        assert_eq!(k56.key(), unhex("D1 5C 00 C4 9F A6 2E 3E"));
        // §3.5.3, 128-bit.
        let k128 = SessionKey::initial(&m, KeyStrength::Bits128, true, true);
        assert_eq!(
            k128.key(),
            unhex("40 5C B2 24 7A 79 56 E6 E2 11 00 7A E2 7B 22 D4")
        );
        let mut msg = b"test message".to_vec();
        rc4_apply(k128.key(), &mut msg);
        assert_eq!(msg, unhex("81 84 83 17 DF 68 84 62 72 FB 5A BE"));
        rc4_apply(k128.key(), &mut msg);
        assert_eq!(msg, b"test message");
    }

    #[test]
    fn key_change_follows_rfc3078() {
        let m = master();
        let mut k = SessionKey::initial(&m, KeyStrength::Bits128, true, false);
        let before = k.key().to_vec();
        k.change();
        // Recompute by hand: interim = SHA(start|pad1|current|pad2); new = RC4(interim, interim).
        let start = get_asymmetric_start_key(&m, 16, true, false);
        let mut expected = get_new_key_from_sha(&start, &before, 16);
        let key = expected.clone();
        rc4_apply(&key, &mut expected);
        assert_eq!(k.key(), expected);
        assert_ne!(k.key(), before);
        let mut k40 = SessionKey::initial(&m, KeyStrength::Bits40, true, false);
        k40.change();
        assert_eq!(&k40.key()[..3], &[0xD1, 0x26, 0x9E]);
        assert!(!format!("{k40:?}").contains("209"));
    }
}
