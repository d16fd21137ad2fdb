//! Keeps the node's cluster clock fed: probes every peer's wall clock over the Raft transport,
//! exports the offsets as metrics and warns when a clock is out of bounds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hourglass_proto::internal::ClockRequest;
use hourglass_types::NodeId;
use tonic::Request;
use tracing::{info, warn};

use crate::clock::{ClusterClock, SystemTimeSource, TimeSource};
use crate::metrics::Metrics;
use crate::network::Peers;

pub type NodeClock = ClusterClock<SystemTimeSource>;

/// How often every peer is probed. Samples live 5 s, so a peer stays known through a few
/// lost probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// While fewer than a majority of the nodes' clocks are known, no partition's engine can
/// start (cluster time is unknown): at start, the first round usually finds peers that are
/// still starting too, and waiting a whole interval for the next held every engine about half
/// a second (docs/benchmarks.md, "restart").
const PROBE_INTERVAL_UNKNOWN: Duration = Duration::from_millis(50);
/// A probe slower than this says little about the peer's clock.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The pause before the next round of probes.
fn next_round_in(cluster_time_known: bool) -> Duration {
    if cluster_time_known {
        PROBE_INTERVAL
    } else {
        PROBE_INTERVAL_UNKNOWN
    }
}

/// Probes every peer in `peers` (this node excluded) until `stopping` says so.
pub async fn run(
    node_id: NodeId,
    clock: Arc<NodeClock>,
    peers: Arc<Peers>,
    members: Vec<NodeId>,
    metrics: Arc<Metrics>,
    stopping: impl Fn() -> bool,
) {
    let others: Vec<NodeId> = members.iter().copied().filter(|&p| p != node_id).collect();
    let max_offset_ms = clock.config().max_offset_ms;
    let mut warned: HashSet<NodeId> = HashSet::new();
    let mut self_out = false;
    loop {
        if stopping() {
            return;
        }
        let round = tokio::time::Instant::now();
        futures::future::join_all(others.iter().map(|&peer| {
            let clock = Arc::clone(&clock);
            let peers = Arc::clone(&peers);
            let metrics = Arc::clone(&metrics);
            async move {
                let Some(mut client) = peers.transport(peer) else {
                    return;
                };
                let mut request = Request::new(ClockRequest { from_node: node_id });
                request.set_timeout(PROBE_TIMEOUT);
                let sent = clock.source().mono_ms();
                // The grpc-timeout header bounds the peer's work, not the wait here: a paused
                // peer or a half-open connection must not hold up the probes of the others.
                match tokio::time::timeout(PROBE_TIMEOUT, client.clock(request)).await {
                    Ok(Ok(r)) => {
                        clock.record(peer, sent, r.into_inner().wall_ms);
                    }
                    Ok(Err(_)) | Err(_) => metrics.clock_probe_failures.inc(),
                }
            }
        }))
        .await;
        for o in clock.offsets() {
            metrics
                .clock_offset
                .with_label_values(&[&o.peer.to_string()])
                .set(o.offset_ms as f64 / 1000.0);
            let beyond = o.offset_ms.unsigned_abs().saturating_sub(o.error_ms) > max_offset_ms;
            if beyond && warned.insert(o.peer) {
                warn!(
                    node_id,
                    peer = o.peer,
                    offset_ms = o.offset_ms,
                    error_ms = o.error_ms,
                    max_clock_offset_ms = max_offset_ms,
                    "peer clock offset beyond the bound"
                );
            } else if !beyond && warned.remove(&o.peer) {
                info!(
                    node_id,
                    peer = o.peer,
                    offset_ms = o.offset_ms,
                    "peer clock offset back within the bound"
                );
            }
        }
        let out = clock.out_of_bounds(members.len());
        metrics.clock_out_of_bounds.set(i64::from(out));
        if out != self_out {
            if out {
                warn!(
                    node_id,
                    max_clock_offset_ms = max_offset_ms,
                    "this node's clock disagrees with a majority of the cluster; fix its time source (it is not ready until then)"
                );
            } else {
                info!(node_id, "this node's clock agrees with the cluster again");
            }
            self_out = out;
        }
        let pause = next_round_in(clock.now_ms(&members).is_some());
        tokio::time::sleep_until(round + pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_frequent_only_while_cluster_time_is_unknown() {
        assert_eq!(next_round_in(true), PROBE_INTERVAL);
        assert!(next_round_in(false) * 5 <= PROBE_INTERVAL);
    }
}
