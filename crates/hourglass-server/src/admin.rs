//! The public `Admin` service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hourglass_proto::internal::{LocalStatusRequest, LocalStatusResponse};
use hourglass_proto::v1;
use hourglass_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::auth::Call;
use crate::client_auth;
use crate::error::Error;
use crate::host::Host;

pub struct AdminService {
    pub host: Arc<Host>,
}

impl AdminService {
    async fn local_status(&self, node: u64) -> Option<LocalStatusResponse> {
        let mut client = self.host.peers.transport(node)?;
        let mut req = Request::new(LocalStatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        client.local_status(req).await.ok().map(|r| r.into_inner())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        client_auth::check(
            &client_auth::caller(&request)?,
            &Call::ClusterStatus,
            &self.host.metrics,
        )?;
        self.status().await.map_err(Status::from)
    }
}

impl AdminService {
    async fn status(&self) -> Result<Response<v1::ClusterStatusResponse>, Error> {
        let host = &self.host;
        let placement = host.placement().ok_or(Error::Starting)?;
        let ids: Vec<u64> = host.config.peers.iter().map(|p| p.id).collect();
        let reports = futures::future::join_all(ids.iter().map(|&id| self.local_status(id))).await;

        let mut nodes = Vec::new();
        // Per partition, the view of the replica with the highest term wins, and within a term
        // the leader's own view (only it knows its engine's figures).
        let mut best: BTreeMap<u32, (hourglass_proto::internal::LocalPartition, bool)> =
            BTreeMap::new();
        for (peer, report) in host.config.peers.iter().zip(&reports) {
            nodes.push(v1::NodeInfo {
                node_id: peer.id,
                address: peer.address.clone(),
                reachable: report.is_some(),
                http_address: report
                    .as_ref()
                    .map(|r| r.http_address.clone())
                    .unwrap_or_default(),
                rss_bytes: report.as_ref().map(|r| r.rss_bytes).unwrap_or(0),
                store_memory_bytes: report.as_ref().map(|r| r.store_memory_bytes).unwrap_or(0),
                disk_bytes: report.as_ref().map(|r| r.disk_bytes).unwrap_or(0),
                clock_offset_ms: report.as_ref().and_then(|r| {
                    crate::clock::own_offset_ms(r.clock_offsets.iter().map(|o| o.offset_ms))
                }),
                clock_out_of_bounds: report.as_ref().is_some_and(|r| r.clock_out_of_bounds),
            });
            for p in report.iter().flat_map(|r| &r.partitions) {
                let own = p.leader == peer.id;
                let replace = match best.get(&p.partition) {
                    None => true,
                    Some((b, b_own)) => {
                        (p.term, own, p.applied_index) > (b.term, *b_own, b.applied_index)
                    }
                };
                if replace {
                    best.insert(p.partition, (*p, own));
                }
            }
        }
        let partitions = placement
            .replicas
            .iter()
            .enumerate()
            .map(|(i, replicas)| {
                let seen = best.get(&(i as u32)).map(|(p, _)| p);
                v1::PartitionStatus {
                    partition: i as u32,
                    replicas: replicas.clone(),
                    leader: seen.map(|s| s.leader).unwrap_or(0),
                    term: seen.map(|s| s.term).unwrap_or(0),
                    applied_index: seen.map(|s| s.applied_index).unwrap_or(0),
                    timers_pending: seen.map(|s| s.timers_pending).unwrap_or(0),
                    timers_in_memory: seen.map(|s| s.timers_in_memory).unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(v1::ClusterStatusResponse {
            answered_by: host.node_id,
            partition_count: placement.partitions(),
            replication_factor: host.config.replication_factor as u32,
            nodes,
            partitions,
        }))
    }
}
