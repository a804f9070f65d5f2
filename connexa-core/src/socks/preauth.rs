//! The pre-authentication budget of one service: connections that have not
//! logged in yet hold a *pre-auth* slot, bounded per source and in total,
//! never one of the `max_connections` relay slots.
//!
//! When the budget is full a new connection is always admitted and an older
//! pre-auth connection is evicted instead, chosen so that idle sockets cannot
//! keep real users out:
//!
//! 1. a source (IPv4 address, IPv6 /64) at `max_per_source` loses its own
//!    connection;
//! 2. otherwise the connection is taken from the source that holds the most
//!    slots (counting the newcomer with its source), so a client whose source
//!    holds fewer slots than the attacker's is never the one evicted;
//! 3. among those, a connection that has not even completed its greeting goes
//!    before one that has, and the oldest first (a real client finishes its
//!    login within a round trip or two; an idle socket only gets older).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

/// What a source is: an IPv4 address (also when it arrives IPv4-mapped on a
/// dual-stack listener), or an IPv6 /64 (one host usually owns a whole /64).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

struct Entry {
    id: u64,
    source: IpAddr,
    greeted: bool,
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: Vec<Entry>,
    per_source: HashMap<IpAddr, usize>,
}

impl Inner {
    fn count(&self, source: &IpAddr) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    /// Removes the entry at `i`; returns it.
    fn take(&mut self, i: usize) -> Entry {
        let e = self.entries.swap_remove(i);
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        e
    }

    /// The entry to evict for a newcomer from `newcomer`; `only_own`: from
    /// that source only.
    fn victim(&self, newcomer: IpAddr, only_own: bool) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !only_own || e.source == newcomer)
            .max_by_key(|(_, e)| {
                let held = self.count(&e.source) + usize::from(e.source == newcomer);
                (held, !e.greeted, std::cmp::Reverse(e.id))
            })
            .map(|(i, _)| i)
    }
}

/// The pre-auth slots of one service.
pub(crate) struct PreAuthBudget {
    max_total: usize,
    max_per_source: usize,
    inner: Mutex<Inner>,
}

/// A pre-auth slot; `evicted` fires when a newer connection took it.
pub(crate) struct Admission {
    pub(crate) id: u64,
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl PreAuthBudget {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        PreAuthBudget {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, evicting at most one older pre-auth
    /// connection (its `evicted` fires) when the budget is full.
    pub(crate) fn admit(&self, peer: IpAddr) -> Admission {
        let source = source_of(peer);
        let mut g = self.lock();
        let own_full = g.count(&source) >= self.max_per_source;
        if (own_full || g.entries.len() >= self.max_total)
            && let Some(i) = g.victim(source, own_full)
        {
            let mut e = g.take(i);
            if let Some(tx) = e.evict.take() {
                let _ = tx.send(());
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = g.next_id;
        g.next_id += 1;
        g.entries.push(Entry {
            id,
            source,
            greeted: false,
            evict: Some(tx),
        });
        *g.per_source.entry(source).or_insert(0) += 1;
        Admission { id, evicted: rx }
    }

    /// The connection completed its greeting (it is now evicted after those
    /// of its source's weight that did not).
    pub(crate) fn greeted(&self, id: u64) {
        if let Some(e) = self.lock().entries.iter_mut().find(|e| e.id == id) {
            e.greeted = true;
        }
    }

    /// The connection left the pre-auth phase (logged in, failed, closed).
    pub(crate) fn release(&self, id: u64) {
        let mut g = self.lock();
        if let Some(i) = g.entries.iter().position(|e| e.id == id) {
            g.take(i);
        }
    }

    /// Connections in the pre-auth phase now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn evicted(a: &mut Admission) -> bool {
        match a.evicted.try_recv() {
            Ok(()) => true,
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Closed) => panic!("sender dropped without eviction"),
        }
    }

    #[test]
    fn sources_are_v4_addresses_and_v6_slash_64s() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:ffff:1:2:3")),
            source_of(ip("2001:db8:1:2::9"))
        );
        assert_ne!(source_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn a_full_source_loses_its_own_oldest_connection() {
        let b = PreAuthBudget::new(100, 3);
        let mut attacker: Vec<Admission> = (0..3).map(|_| b.admit(ip("10.0.0.1"))).collect();
        let mut client = b.admit(ip("10.0.0.2"));
        assert!(attacker.iter_mut().all(|a| !evicted(a)));
        let mut newer = b.admit(ip("10.0.0.1"));
        assert!(evicted(&mut attacker[0]), "the oldest of the full source");
        assert!(!evicted(&mut attacker[1]) && !evicted(&mut attacker[2]));
        assert!(!evicted(&mut client) && !evicted(&mut newer));
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn a_full_budget_evicts_from_the_heaviest_source_never_the_lone_client() {
        let b = PreAuthBudget::new(8, 8);
        let mut client = b.admit(ip("10.0.0.9"));
        // Two attacker sources fill the rest and keep reconnecting.
        let mut attackers = Vec::new();
        for i in 0..1000 {
            let src = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" };
            attackers.push(b.admit(ip(src)));
            assert!(b.len() <= 8);
        }
        // A second client source also gets in, at an attacker's expense.
        let mut second = b.admit(ip("10.0.0.10"));
        assert!(
            !evicted(&mut client),
            "the client holds fewer slots than any attacker"
        );
        assert!(!evicted(&mut second));
        let gone = attackers.iter_mut().map(evicted).filter(|e| *e).count();
        assert_eq!(gone, 1000 - 7 + 1);
    }

    #[test]
    fn among_equals_the_ungreeted_and_oldest_go_first() {
        let b = PreAuthBudget::new(3, 3);
        let mut a = b.admit(ip("10.0.0.1"));
        let mut c = b.admit(ip("10.0.0.2"));
        let mut d = b.admit(ip("10.0.0.3"));
        b.greeted(a.id);
        let mut e = b.admit(ip("10.0.0.4"));
        assert!(evicted(&mut c), "oldest without a greeting");
        assert!(!evicted(&mut a) && !evicted(&mut d) && !evicted(&mut e));
        b.greeted(d.id);
        b.greeted(e.id);
        let _f = b.admit(ip("10.0.0.5"));
        assert!(evicted(&mut a), "all greeted: the oldest");
    }

    #[test]
    fn released_slots_are_free_again() {
        let b = PreAuthBudget::new(2, 2);
        let mut x = b.admit(ip("10.0.0.1"));
        let y = b.admit(ip("10.0.0.1"));
        b.release(y.id);
        b.release(y.id); // twice is harmless
        let _z = b.admit(ip("10.0.0.2"));
        assert!(!evicted(&mut x));
        assert_eq!(b.len(), 2);
    }
}
