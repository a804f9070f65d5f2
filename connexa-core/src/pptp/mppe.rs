//! MPPE (RFC 3078): the key derivation from MS-CHAPv2 (RFC 3079) and the RC4-based
//! key change of RFC 3078 §7.3, checked byte for byte against RFC 3079 §3.5, and
//! the stateless datapath ([`MppeSender`], [`MppeReceiver`]): coherency counts,
//! the flushed bit, a key change before every packet (RFC 3078 §8.1, as Linux's
//! `ppp_mppe` does it). CCP negotiation lives in [`ccp`](super::ppp::ccp).
//!
//! An MPPE packet is the PPP protocol `0x00FD` with this information field:
//!
//! ```text
//! |A|B|C|D| coherency count (12 bits) | RC4(protocol (2 octets) | data) |
//! ```
//!
//! A = flushed (always set in stateless mode), D = encrypted (always set),
//! B/C = MPPC compression (never set: compression is refused).
//!
//! ```
//! use connexa_core::pptp::mppe::{KeyStrength, MppeReceiver, MppeSender, SessionKey};
//! let master = [7u8; 16];
//! let mut tx = MppeSender::new(SessionKey::initial(&master, KeyStrength::Bits128, true, false));
//! let mut rx = MppeReceiver::new(SessionKey::initial(&master, KeyStrength::Bits128, false, true));
//! let mut wire = Vec::new();
//! tx.encrypt(0x0021, b"an IPv4 packet", &mut wire);
//! assert_eq!(rx.decrypt(&wire).unwrap(), (0x0021, b"an IPv4 packet".to_vec()));
//! ```
//!
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

/// Flag A of the MPPE header: the RC4 state was re-initialised (flushed).
pub const MPPE_FLUSHED: u8 = 0x80;
/// Flag B and C of the MPPE header: MPPC compression (never used here).
pub const MPPE_COMPRESSED: u8 = 0x60;
/// Flag D of the MPPE header: the packet is encrypted.
pub const MPPE_ENCRYPTED: u8 = 0x10;
/// The coherency count is 12 bits wide.
pub const CCOUNT_SPACE: u16 = 4096;
/// Octets MPPE adds in front of the encrypted protocol field.
pub const MPPE_OVERHEAD: usize = 2;

/// Why an MPPE packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MppeError {
    /// Shorter than the header plus a protocol field.
    #[error("truncated MPPE packet")]
    Truncated,
    /// The D (encrypted) bit is clear.
    #[error("MPPE packet not encrypted")]
    NotEncrypted,
    /// MPPC compression bits are set (we refused compression).
    #[error("MPPC-compressed packet (compression was refused)")]
    Compressed,
    /// Stateless mode requires the flushed bit on every packet.
    #[error("flushed bit missing in stateless mode")]
    NotFlushed,
    /// The coherency count is not ahead of the last one (a duplicate or a packet
    /// more than half the count space late).
    #[error("late or repeated coherency count {0}")]
    Late(u16),
    /// The decrypted protocol field is not a valid PPP protocol number.
    #[error("bad protocol field after decryption")]
    BadProtocol,
}

/// The sending half of a stateless MPPE channel: a key change before every
/// packet, fresh RC4 state per packet, flushed + encrypted bits set.
#[derive(Debug, Clone)]
pub struct MppeSender {
    key: SessionKey,
    ccount: u16,
    sent: u64,
}

impl MppeSender {
    /// A sender starting from the initial session key of its direction.
    pub fn new(key: SessionKey) -> Self {
        MppeSender {
            key,
            ccount: 0,
            sent: 0,
        }
    }

    /// Packets encrypted so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Appends the information field of an MPPE packet (protocol `0x00FD`)
    /// carrying `protocol` and `data` to `out`.
    pub fn encrypt(&mut self, protocol: u16, data: &[u8], out: &mut Vec<u8>) {
        // RFC 3078 §8.1 / Linux ppp_mppe: stateless mode changes the key before
        // every packet, the first included.
        self.key.change();
        let c = self.ccount;
        self.ccount = (c + 1) % CCOUNT_SPACE;
        self.sent += 1;
        out.reserve(MPPE_OVERHEAD + 2 + data.len());
        out.push(MPPE_FLUSHED | MPPE_ENCRYPTED | (c >> 8) as u8);
        out.push(c as u8);
        let start = out.len();
        out.extend_from_slice(&protocol.to_be_bytes());
        out.extend_from_slice(data);
        rc4_apply(self.key.key(), &mut out[start..]);
    }
}

/// The receiving half of a stateless MPPE channel. Lost packets cost nothing
/// (the key is advanced by the coherency-count distance); late and repeated
/// packets are dropped.
#[derive(Debug, Clone)]
pub struct MppeReceiver {
    key: SessionKey,
    ccount: u16,
    received: u64,
}

impl MppeReceiver {
    /// A receiver starting from the initial session key of its direction.
    pub fn new(key: SessionKey) -> Self {
        MppeReceiver {
            key,
            ccount: CCOUNT_SPACE - 1,
            received: 0,
        }
    }

    /// Packets decrypted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Decrypts the information field of an MPPE packet: the inner protocol and
    /// its data.
    ///
    /// # Errors
    /// See [`MppeError`]; the receiver's state is unchanged by a rejected packet.
    pub fn decrypt(&mut self, info: &[u8]) -> Result<(u16, Vec<u8>), MppeError> {
        let (hdr, body) = info.split_first_chunk::<2>().ok_or(MppeError::Truncated)?;
        let [b0, b1] = *hdr;
        if body.is_empty() {
            return Err(MppeError::Truncated);
        }
        if b0 & MPPE_ENCRYPTED == 0 {
            return Err(MppeError::NotEncrypted);
        }
        if b0 & MPPE_COMPRESSED != 0 {
            return Err(MppeError::Compressed);
        }
        if b0 & MPPE_FLUSHED == 0 {
            return Err(MppeError::NotFlushed);
        }
        let ccount = (u16::from(b0 & 0x0F) << 8) | u16::from(b1);
        let dist = (ccount + CCOUNT_SPACE - self.ccount) % CCOUNT_SPACE;
        if dist == 0 || dist > CCOUNT_SPACE / 2 {
            return Err(MppeError::Late(ccount));
        }
        let mut key = self.key.clone();
        for _ in 0..dist {
            key.change();
        }
        let mut plain = body.to_vec();
        rc4_apply(key.key(), &mut plain);
        let (protocol, skip) = match plain.as_slice() {
            [p, ..] if p & 1 == 1 => (u16::from(*p), 1),
            [a, b, ..] if b & 1 == 1 => (u16::from_be_bytes([*a, *b]), 2),
            _ => return Err(MppeError::BadProtocol),
        };
        plain.drain(..skip);
        self.key = key;
        self.ccount = ccount;
        self.received += 1;
        Ok((protocol, plain))
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

    fn pair(m: &[u8; 16]) -> (MppeSender, MppeReceiver) {
        (
            MppeSender::new(SessionKey::initial(m, KeyStrength::Bits128, true, false)),
            MppeReceiver::new(SessionKey::initial(m, KeyStrength::Bits128, false, true)),
        )
    }

    #[test]
    fn stateless_round_trip_rekeys_every_packet() {
        let m = master();
        let (mut tx, mut rx) = pair(&m);
        let mut wires = Vec::new();
        for i in 0..300u32 {
            let mut w = Vec::new();
            tx.encrypt(0x0021, &i.to_be_bytes().repeat(10), &mut w);
            assert_eq!(w[0] & 0xF0, MPPE_FLUSHED | MPPE_ENCRYPTED);
            assert_eq!(((u16::from(w[0] & 0x0F)) << 8) | u16::from(w[1]), i as u16);
            wires.push(w);
        }
        // Same plaintext, different ciphertext: the key changed between packets.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut t2, _) = pair(&m);
        t2.encrypt(0x0021, b"same", &mut a);
        t2.encrypt(0x0021, b"same", &mut b);
        assert_ne!(a[2..], b[2..]);
        // The first packet uses the initial key changed once (as Linux does).
        let mut k = SessionKey::initial(&m, KeyStrength::Bits128, true, false);
        k.change();
        let mut expect = vec![0x00, 0x21];
        expect.extend_from_slice(b"same");
        rc4_apply(k.key(), &mut expect);
        assert_eq!(a[2..], expect[..]);
        // Lose every third packet: the receiver catches up by the count distance.
        for (i, w) in wires.iter().enumerate() {
            if i % 3 == 1 {
                continue;
            }
            let (proto, data) = rx.decrypt(w).unwrap();
            assert_eq!(proto, 0x0021);
            assert_eq!(data, (i as u32).to_be_bytes().repeat(10));
        }
        // A repeated or late packet is refused and changes nothing.
        assert_eq!(rx.decrypt(&wires[299]), Err(MppeError::Late(299)));
        assert_eq!(rx.decrypt(&wires[10]), Err(MppeError::Late(10)));
        let mut w = Vec::new();
        tx.encrypt(0x0021, b"after", &mut w);
        assert_eq!(rx.decrypt(&w).unwrap().1, b"after");
    }

    #[test]
    fn random_loss_and_bursts_never_desynchronise_the_keys() {
        let m = master();
        let (mut tx, mut rx) = pair(&m);
        // splitmix64: a seeded loss pattern of single losses and bursts (up to
        // 1,500 packets: a second of a 20 Mbit/s download), across several
        // wraps of the 12-bit coherency count.
        let mut state = 42u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (mut delivered, mut lost_in_burst) = (0, 0);
        let mut skip = 0u64;
        for i in 0..20_000u32 {
            let mut w = Vec::new();
            tx.encrypt(0x0021, &i.to_be_bytes(), &mut w);
            if skip > 0 {
                skip -= 1;
                lost_in_burst += 1;
                continue;
            }
            match next() % 1000 {
                0..=99 => continue, // 10 % single losses
                100 => {
                    skip = next() % 1500; // a burst
                    continue;
                }
                _ => {}
            }
            let (proto, data) = rx.decrypt(&w).unwrap_or_else(|e| panic!("packet {i}: {e}"));
            assert_eq!(
                (proto, data),
                (0x0021, i.to_be_bytes().to_vec()),
                "packet {i}"
            );
            delivered += 1;
        }
        assert!(
            delivered > 10_000 && lost_in_burst > 1_000,
            "{delivered} {lost_in_burst}"
        );
    }

    #[test]
    fn coherency_count_wraps_and_bad_headers_are_refused() {
        let m = master();
        let (mut tx, mut rx) = pair(&m);
        for i in 0..5000u32 {
            let mut w = Vec::new();
            tx.encrypt(0x0021, &i.to_le_bytes(), &mut w);
            assert_eq!(rx.decrypt(&w).unwrap().1, i.to_le_bytes());
        }
        let mut w = Vec::new();
        tx.encrypt(0x0021, b"x", &mut w);
        let mut no_flush = w.clone();
        no_flush[0] &= !MPPE_FLUSHED;
        assert_eq!(rx.decrypt(&no_flush), Err(MppeError::NotFlushed));
        let mut plain = w.clone();
        plain[0] &= !MPPE_ENCRYPTED;
        assert_eq!(rx.decrypt(&plain), Err(MppeError::NotEncrypted));
        let mut mppc = w.clone();
        mppc[0] |= 0x20;
        assert_eq!(rx.decrypt(&mppc), Err(MppeError::Compressed));
        assert_eq!(rx.decrypt(&w[..2]), Err(MppeError::Truncated));
        assert_eq!(rx.decrypt(&w).unwrap().1, b"x");
        // A wrong key gives garbage that fails the protocol check, or at least
        // not the plaintext.
        let (mut tx2, _) = pair(&[1u8; 16]);
        let mut w2 = Vec::new();
        tx2.encrypt(0x0021, b"secret payload", &mut w2);
        let (_, mut rx3) = pair(&m);
        assert_ne!(
            rx3.decrypt(&w2).map(|x| x.1),
            Ok(b"secret payload".to_vec())
        );
    }

    #[test]
    fn compressed_protocol_field_inside_is_accepted() {
        let m = master();
        let (_, mut rx) = pair(&m);
        let mut k = SessionKey::initial(&m, KeyStrength::Bits128, true, false);
        k.change();
        let mut body = vec![0x21, 0x45, 0x00];
        rc4_apply(k.key(), &mut body);
        let mut w = vec![0x90, 0x00];
        w.extend(body);
        assert_eq!(rx.decrypt(&w).unwrap(), (0x0021, vec![0x45, 0x00]));
    }

    proptest::proptest! {
        #[test]
        fn decrypt_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let (_, mut rx) = pair(&[3u8; 16]);
            let _ = rx.decrypt(&bytes);
        }
    }
}
