//! A small writer of MaxMind DB files (format 2.0, IPv6 tree with IPv4
//! networks at `::/96`, 32-bit records), for tests, demos and benchmarks.
//!
//! ```
//! use connexa_core::geo::{MmdbGeo, MmdbWriter};
//! let mut w = MmdbWriter::new("Test-City");
//! w.insert("10.1.0.0/16".parse()?, serde_json::json!({"country_code": "NL", "city": "Delft"}))?;
//! let dir = std::env::temp_dir().join(format!("mmdb-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("t.mmdb");
//! std::fs::write(&path, w.to_bytes()?)?;
//! let geo = MmdbGeo::open(Some(&path), None)?;
//! let facts = geo.lookup_now("10.1.2.3".parse()?)?;
//! assert_eq!(facts.city.as_deref(), Some("Delft"));
//! assert_eq!(facts.country.as_deref(), Some("Netherlands"));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;

/// Why a database cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A network is not `ADDRESS/PREFIX` with a prefix the family allows.
    #[error("bad network {0:?} (use ADDRESS/PREFIX)")]
    BadNetwork(String),
    /// A value the format cannot hold (`null`, a number out of range).
    #[error("cannot store {0} in a MaxMind DB")]
    BadValue(String),
    /// More nodes than 32-bit records can address.
    #[error("database too large")]
    TooLarge,
}

/// An IP network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = WriteError;
    fn from_str(s: &str) -> Result<Self, WriteError> {
        let bad = || WriteError::BadNetwork(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Network { addr, prefix })
    }
}

impl Network {
    /// The network's bits in the IPv6 tree (IPv4 below `::/96`) and their count.
    fn bits(self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), self.prefix + 96),
            IpAddr::V6(a) => (u128::from(a), self.prefix),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a MaxMind DB in memory. Later inserts win where networks overlap.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
    /// Encoded record -> its offset, so identical records are stored once.
    dedup: HashMap<Vec<u8>, usize>,
}

impl MmdbWriter {
    /// An empty database of this type (`GeoLite2-City`, `GeoLite2-ASN`, ...).
    pub fn new(database_type: &str) -> Self {
        MmdbWriter {
            database_type: database_type.to_owned(),
            nodes: vec![[Rec::Empty; 2]],
            data: Vec::new(),
            dedup: HashMap::new(),
        }
    }

    /// Stores `record` (a JSON object: maps, strings, numbers, booleans,
    /// arrays) for every address of `network`.
    pub fn insert(&mut self, network: Network, record: Value) -> Result<(), WriteError> {
        let mut enc = Vec::new();
        encode(&record, &mut enc)?;
        let offset = match self.dedup.get(&enc) {
            Some(o) => *o,
            None => {
                let o = self.data.len();
                self.data.extend_from_slice(&enc);
                self.dedup.insert(enc, o);
                o
            }
        };
        let (bits, len) = network.bits();
        if len == 0 {
            return Err(WriteError::BadNetwork("a /0 network".into()));
        }
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((bits >> (127 - u32::from(depth))) & 1) as usize;
            if depth + 1 == len {
                self.nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(n) => n,
                other => {
                    // A new node; a shorter network's data stays on both sides.
                    let n = self.nodes.len();
                    let keep = if let Rec::Data(_) = other {
                        other
                    } else {
                        Rec::Empty
                    };
                    self.nodes.push([keep; 2]);
                    self.nodes[node][bit] = Rec::Node(n);
                    n
                }
            };
        }
        Ok(())
    }

    /// The database file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriteError> {
        let count = u32::try_from(self.nodes.len()).map_err(|_| WriteError::TooLarge)?;
        let value = |r: Rec| -> Result<u32, WriteError> {
            match r {
                Rec::Empty => Ok(count),
                Rec::Node(n) => u32::try_from(n).map_err(|_| WriteError::TooLarge),
                Rec::Data(o) => u32::try_from(o)
                    .ok()
                    .and_then(|o| o.checked_add(count)?.checked_add(16))
                    .ok_or(WriteError::TooLarge),
            }
        };
        let mut out = Vec::with_capacity(self.nodes.len() * 8 + self.data.len() + 256);
        for [l, r] in &self.nodes {
            out.extend_from_slice(&value(*l)?.to_be_bytes());
            out.extend_from_slice(&value(*r)?.to_be_bytes());
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let build_epoch = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let meta = serde_json::json!({
            "binary_format_major_version": 2,
            "binary_format_minor_version": 0,
            "build_epoch": build_epoch,
            "database_type": self.database_type,
            "description": {"en": "written by connexa-core"},
            "ip_version": 6,
            "languages": ["en"],
            "node_count": count,
            "record_size": 32,
        });
        // The reader wants these fields with these exact types.
        let mut m = Vec::new();
        let Value::Object(map) = meta else {
            return Err(WriteError::BadValue("metadata".into()));
        };
        control(7, map.len(), &mut m);
        for (k, v) in &map {
            encode(&Value::String(k.clone()), &mut m)?;
            match k.as_str() {
                "binary_format_major_version"
                | "binary_format_minor_version"
                | "ip_version"
                | "record_size" => uint(5, v.as_u64().unwrap_or(0), &mut m),
                "node_count" => uint(6, v.as_u64().unwrap_or(0), &mut m),
                "build_epoch" => uint(9, v.as_u64().unwrap_or(0), &mut m),
                _ => encode(v, &mut m)?,
            }
        }
        out.extend_from_slice(&m);
        Ok(out)
    }
}

/// A control byte (and extended type and size bytes) for `ty` of `size`.
fn control(ty: u8, size: usize, out: &mut Vec<u8>) {
    let (first, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else if size < 65_821 {
        let s = (size - 285) as u16;
        (30, s.to_be_bytes().to_vec())
    } else {
        let s = (size - 65_821) as u32;
        (31, s.to_be_bytes()[1..].to_vec())
    };
    if ty <= 7 {
        out.push((ty << 5) | first);
    } else {
        out.push(first);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
}

fn uint(ty: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(ty, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(v: &Value, out: &mut Vec<u8>) -> Result<(), WriteError> {
    match v {
        Value::Null => return Err(WriteError::BadValue("null".into())),
        Value::Bool(b) => control(14, usize::from(*b), out),
        Value::String(s) => {
            control(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                uint(if u <= u64::from(u32::MAX) { 6 } else { 9 }, u, out);
            } else if let Some(i) = n.as_i64() {
                let i = i32::try_from(i).map_err(|_| WriteError::BadValue(n.to_string()))?;
                control(8, 4, out);
                out.extend_from_slice(&i.to_be_bytes());
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                control(3, 8, out);
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
        Value::Array(a) => {
            control(11, a.len(), out);
            for x in a {
                encode(x, out)?;
            }
        }
        Value::Object(m) => {
            control(7, m.len(), out);
            for (k, x) in m {
                encode(&Value::String(k.clone()), out)?;
                encode(x, out)?;
            }
        }
    }
    Ok(())
}
