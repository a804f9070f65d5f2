//! The smoltcp device of a user-space IP stack over PPP: two queues of whole
//! IPv4 datagrams (Medium::Ip). The tunnel's datapath pushes decrypted
//! datagrams into [`PacketQueues::rx`] and sends what smoltcp left in
//! [`PacketQueues::tx`]; the simulator's and the test servers' hosts use the
//! same device on the server side.

use std::collections::VecDeque;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};

/// A smoltcp [`Device`] made of two datagram queues.
#[derive(Debug, Default)]
pub struct PacketQueues {
    /// Datagrams received from the peer, for smoltcp to consume.
    pub rx: VecDeque<Vec<u8>>,
    /// Datagrams smoltcp produced, to send to the peer.
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl PacketQueues {
    /// Empty queues for a link with this MTU (the PPP MRU the peer accepts).
    pub fn new(mtu: usize) -> Self {
        PacketQueues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        }
    }
}

/// A received datagram, handed to smoltcp.
#[derive(Debug)]
pub struct Rx(Vec<u8>);

/// Room for one datagram to send.
#[derive(Debug)]
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for PacketQueues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
