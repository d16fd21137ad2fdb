//! The node's HTTP port: liveness and readiness probes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::host::Host;

pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(host)
}

/// Prometheus text; per-partition gauges are read at scrape time.
async fn metrics(
    State(host): State<Arc<Host>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let m = &host.metrics;
    for (partition, group) in host.groups() {
        let label = partition.to_string();
        if let Ok(state) = host.store.partition_state(partition) {
            m.timers_pending
                .with_label_values(&[&label])
                .set(state.pending as i64);
        }
        m.timers_in_memory
            .with_label_values(&[&label])
            .set(host.timers_in_memory(partition) as i64);
        let raft = group.metrics().borrow().clone();
        let last = raft.last_log_index.unwrap_or(0);
        let purged = raft.purged.map(|l| l.index + 1).unwrap_or(0);
        m.raft_log_entries
            .with_label_values(&[&label])
            .set(last.saturating_sub(purged) as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        m.render(),
    )
}

/// Ready when start-up finished, this node's clock agrees with a majority of the cluster, and
/// every partition replica on this node knows its leader.
async fn readyz(State(host): State<Arc<Host>>) -> (StatusCode, String) {
    if !host.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: waiting for peers\n".into(),
        );
    }
    if host.clock_out_of_bounds() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "clock out of bounds: this node's clock disagrees with a majority of the cluster by more than {} ms (offsets: {:?})\n",
                host.config.max_clock_offset_ms,
                host.clock.offsets()
            ),
        );
    }
    let leaderless: Vec<u32> = host
        .groups()
        .filter(|(_, g)| g.metrics().borrow().current_leader.is_none())
        .map(|(p, _)| p)
        .collect();
    if leaderless.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("partitions without a leader: {leaderless:?}\n"),
        )
    }
}
