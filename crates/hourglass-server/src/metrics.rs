//! Every metric a node exports, defined in this one place, and their Prometheus text at
//! `/metrics`. One registry per node, so nodes sharing a process (`hourglass dev`) report
//! separately.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub timers_scheduled: IntCounter,
    pub timers_cancelled: IntCounter,
    pub timers_fired: IntCounter,
    pub timers_delivered: IntCounter,
    pub timers_acked: IntCounter,
    pub timers_redelivered: IntCounter,
    pub timers_pending: IntGaugeVec,
    pub timers_in_memory: IntGaugeVec,
    pub fire_lateness: Histogram,
    pub raft_commit_latency: Histogram,
    pub raft_leader_changes: IntCounter,
    pub raft_log_entries: IntGaugeVec,
    pub raft_snapshots: IntCounter,
    pub grpc_requests: IntCounterVec,
    pub workers_connected: IntGauge,
    pub wal_fsyncs: IntGauge,
    pub wal_appends: IntGauge,
    pub clock_offset: GaugeVec,
    pub clock_out_of_bounds: IntGauge,
    pub clock_probe_failures: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new(node_id: u64) -> Self {
        let registry = Registry::new_custom(
            Some("hourglass".into()),
            Some([("node_id".to_string(), node_id.to_string())].into()),
        )
        .expect("valid registry");
        let r = &registry;
        let seconds = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ];
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "grpc_requests_total",
                "Public gRPC requests by method and status code.",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        r.register(Box::new(grpc_requests.clone()))
            .expect("metric registered once");
        let clock_offset = GaugeVec::new(
            Opts::new(
                "clock_offset_seconds",
                "Estimated clock offset of each peer: its wall clock minus this node's.",
            ),
            &["peer"],
        )
        .expect("valid metric");
        r.register(Box::new(clock_offset.clone()))
            .expect("metric registered once");
        Metrics {
            clock_offset,
            clock_out_of_bounds: gauge(
                r,
                "clock_out_of_bounds",
                "1 when this node's clock disagrees with a majority of the cluster by more than max_clock_offset_ms.",
            ),
            clock_probe_failures: counter(
                r,
                "clock_probe_failures_total",
                "Clock probes of peers that failed or timed out.",
            ),
            timers_scheduled: counter(
                r,
                "timers_scheduled_total",
                "Timers created by Schedule (repeats excluded).",
            ),
            timers_cancelled: counter(r, "timers_cancelled_total", "Timers moved to CANCELLED."),
            timers_fired: counter(
                r,
                "timers_fired_total",
                "Timers moved to FIRED by this node as leader.",
            ),
            timers_delivered: counter(
                r,
                "timers_delivered_total",
                "Deliveries sent to workers, redeliveries included.",
            ),
            timers_acked: counter(
                r,
                "timers_acked_total",
                "Deliveries acknowledged by workers.",
            ),
            timers_redelivered: counter(
                r,
                "timers_redelivered_total",
                "Deliveries made again after a timeout, disconnect or failover.",
            ),
            timers_pending: gauge_vec(
                r,
                "timers_pending",
                "Timers in SCHEDULED state, per partition replica on this node.",
                &["partition"],
            ),
            timers_in_memory: gauge_vec(
                r,
                "timers_in_memory",
                "Timers in the leader's timing wheel, per partition.",
                &["partition"],
            ),
            fire_lateness: histogram(
                r,
                "fire_lateness_seconds",
                "Fire commit time minus the timer's fire_at.",
                seconds.clone(),
            ),
            raft_commit_latency: histogram(
                r,
                "raft_commit_latency_seconds",
                "Time from proposal to applied commit on the leader.",
                seconds,
            ),
            raft_leader_changes: counter(
                r,
                "raft_leader_changes_total",
                "Leader changes seen by this node's groups.",
            ),
            raft_log_entries: gauge_vec(
                r,
                "raft_log_entries",
                "Entries in the Raft log after the last purge, per partition.",
                &["partition"],
            ),
            raft_snapshots: counter(
                r,
                "raft_snapshots_total",
                "Snapshots built or installed by this node's groups.",
            ),
            wal_fsyncs: gauge(r, "wal_fsyncs", "WAL fsyncs since the node started."),
            wal_appends: gauge(
                r,
                "wal_appends",
                "Raft log appends made durable since the node started; divided by wal_fsyncs, appends per fsync.",
            ),
            grpc_requests,
            workers_connected: gauge(r, "workers_connected", "Worker streams connected to this node."),
            registry,
        }
    }

    /// Counts one public request with its outcome.
    pub fn request<T>(&self, method: &str, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
