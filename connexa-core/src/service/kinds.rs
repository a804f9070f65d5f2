//! [`KindLauncher`]: one [`ServiceLauncher`] over one launcher per service
//! kind, dispatching by the node's wanted kind ([`Node::service_kind`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Node, NodeId, ServiceEndpoint, ServiceKind};
use crate::ports::{Health, ServiceCounters, ServiceError, ServiceLauncher};

/// Starts each node's service with the launcher of its wanted kind
/// (`socks`: SOCKS5, `tun`: a TUN interface, `openvpn`: an OpenVPN server); stops, checks and counts a
/// service with the launcher that runs it. The engine sees one launcher and
/// knows nothing of kinds.
///
/// A node whose wanted kind changes while its service runs keeps the running
/// one until it is restarted ([`want_service_kind`](crate::ops::want_service_kind)
/// asks for that restart).
pub struct KindLauncher {
    socks: Arc<dyn ServiceLauncher>,
    tun: Arc<dyn ServiceLauncher>,
    openvpn: Option<Arc<dyn ServiceLauncher>>,
}

impl std::fmt::Debug for KindLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindLauncher").finish_non_exhaustive()
    }
}

impl KindLauncher {
    /// A launcher over the SOCKS5 launcher and the `tun` launcher.
    pub fn new(socks: Arc<dyn ServiceLauncher>, tun: Arc<dyn ServiceLauncher>) -> Self {
        KindLauncher {
            socks,
            tun,
            openvpn: None,
        }
    }

    /// This launcher with `openvpn` services run by `openvpn` (without one,
    /// starting an `openvpn` service fails, saying so).
    pub fn with_openvpn(mut self, openvpn: Arc<dyn ServiceLauncher>) -> Self {
        self.openvpn = Some(openvpn);
        self
    }

    fn of(&self, kind: ServiceKind) -> Option<&Arc<dyn ServiceLauncher>> {
        match kind {
            ServiceKind::Socks => Some(&self.socks),
            ServiceKind::Tun => Some(&self.tun),
            ServiceKind::Openvpn => self.openvpn.as_ref(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn ServiceLauncher>> {
        [&self.socks, &self.tun]
            .into_iter()
            .chain(self.openvpn.as_ref())
    }

    /// The launcher running the node's service, if any.
    async fn running_in(&self, node: NodeId) -> Option<&Arc<dyn ServiceLauncher>> {
        for l in self.all() {
            if l.running().await.contains(&node) {
                return Some(l);
            }
        }
        None
    }
}

#[async_trait]
impl ServiceLauncher for KindLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        let Some(wanted) = self.of(node.service_kind) else {
            return Err(ServiceError::StartFailed(format!(
                "{} services are not available in this process",
                node.service_kind
            )));
        };
        if let Some(l) = self.running_in(node.id).await
            && !Arc::ptr_eq(l, wanted)
        {
            return Err(ServiceError::StartFailed(format!(
                "a service of another kind runs for node {}: restart it to change the kind",
                node.id
            )));
        }
        // A stored endpoint of the other kind means nothing to this one.
        let previous = previous.filter(|p| p.kind() == node.service_kind);
        wanted.start(node, previous).await
    }

    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        match self.running_in(node).await {
            Some(l) => l.stop(node).await,
            None => Err(ServiceError::NotRunning(node)),
        }
    }

    async fn health(&self, node: &Node) -> Health {
        match self.running_in(node.id).await {
            Some(l) => l.health(node).await,
            None => match self.of(node.service_kind) {
                Some(l) => l.health(node).await,
                None => Health::Unhealthy("no service runs for this node in this process".into()),
            },
        }
    }

    async fn running(&self) -> Vec<NodeId> {
        let mut all = Vec::new();
        for l in self.all() {
            all.extend(l.running().await);
        }
        all
    }

    fn counters(&self, node: NodeId) -> Option<ServiceCounters> {
        self.all().find_map(|l| l.counters(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::MockServiceLauncher;

    fn node(kind: ServiceKind) -> Node {
        Node {
            service_kind: kind,
            ..Node::added(
                NodeId(3),
                "127.0.0.1".parse().unwrap(),
                1723,
                "a",
                "b".into(),
                chrono::Utc::now(),
            )
        }
    }

    fn endpoint(host: &str, port: u16) -> ServiceEndpoint {
        ServiceEndpoint {
            host: host.into(),
            port,
            username: String::new(),
            password: crate::domain::Secret::new(""),
        }
    }

    #[tokio::test]
    async fn starts_by_wanted_kind_and_stops_where_it_runs() {
        let mut socks = MockServiceLauncher::new();
        socks.expect_running().returning(Vec::new);
        socks.expect_start().never();
        let mut tun = MockServiceLauncher::new();
        let mut calls = 0;
        tun.expect_running().returning(move || {
            calls += 1;
            // Not running at the start; running afterwards.
            if calls <= 1 {
                Vec::new()
            } else {
                vec![NodeId(3)]
            }
        });
        tun.expect_start()
            .withf(|n, prev| n.id == NodeId(3) && prev.is_none())
            .times(1)
            .returning(|_, _| Ok(endpoint("cx3", 0)));
        tun.expect_stop().times(1).returning(|_| Ok(()));
        let k = KindLauncher::new(Arc::new(socks), Arc::new(tun));
        // A stored SOCKS endpoint is not handed to the tun launcher.
        let ep = k
            .start(&node(ServiceKind::Tun), Some(endpoint("127.0.0.1", 20001)))
            .await
            .unwrap();
        assert_eq!(ep.host, "cx3");
        assert_eq!(k.running().await, vec![NodeId(3)]);
        k.stop(NodeId(3)).await.unwrap();
    }

    #[tokio::test]
    async fn a_running_service_of_the_other_kind_is_not_doubled() {
        let mut socks = MockServiceLauncher::new();
        socks.expect_running().returning(|| vec![NodeId(3)]);
        let mut tun = MockServiceLauncher::new();
        tun.expect_running().returning(Vec::new);
        tun.expect_start().never();
        let k = KindLauncher::new(Arc::new(socks), Arc::new(tun));
        let e = k.start(&node(ServiceKind::Tun), None).await.unwrap_err();
        assert!(e.to_string().contains("another kind"), "{e}");
        let mut none = MockServiceLauncher::new();
        none.expect_running().returning(Vec::new);
        let mut none2 = MockServiceLauncher::new();
        none2.expect_running().returning(Vec::new);
        let k = KindLauncher::new(Arc::new(none), Arc::new(none2));
        assert_eq!(
            k.stop(NodeId(9)).await,
            Err(ServiceError::NotRunning(NodeId(9)))
        );
    }
}
