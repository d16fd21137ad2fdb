//! Every metric a node exports, defined in this one place, and their Prometheus text at
//! `/metrics`. One registry per node, so nodes sharing a process (`hourglass dev`) report
//! separately. Public RPCs are counted by one tower layer on the gRPC server,
//! [`CountRequestsLayer`]; the log writer's work by a collector reading its counters.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use hourglass_storage::{Store, SyncStats, WeakStore};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tonic::codegen::http;

pub use crate::stages::{FireStage, RaftStage, ScheduleStage, Stages};

pub struct Metrics {
    registry: Registry,
    pub timers_scheduled: IntCounter,
    pub timers_cancelled: IntCounter,
    pub timers_fired: IntCounter,
    pub timers_delivered: IntCounter,
    pub timers_acked: IntCounter,
    pub timers_redelivered: IntCounter,
    pub acks_refused: IntCounter,
    pub worker_streams_idle_closed: IntCounter,
    pub timers_pending: IntGaugeVec,
    pub timers_in_memory: IntGaugeVec,
    pub fire_lateness: Histogram,
    pub raft_commit_latency: Histogram,
    pub fire_stages: Stages<FireStage>,
    pub schedule_stages: Stages<ScheduleStage>,
    pub raft_stages: Stages<RaftStage>,
    pub raft_leader_changes: IntCounter,
    pub raft_log_entries: IntGaugeVec,
    pub raft_snapshots: IntCounter,
    pub grpc_requests: IntCounterVec,
    /// Calls this node made to forward unary Schedules to their leader, by `call`.
    pub schedule_forwards: IntCounterVec,
    pub workers_connected: IntGauge,
    pub deliveries_in_memory: IntGauge,
    pub deliveries_in_memory_bytes: IntGauge,
    pub deliveries_in_memory_max: IntGauge,
    /// The node's log writer, whose counters `/metrics` reports; set once it starts.
    wal: Arc<OnceLock<Arc<SyncStats>>>,
    /// The node's RocksDB, whose memory and disk `/metrics` reports; set once it is open. Weak,
    /// so that the database closes with the node, not with its metrics.
    store: Arc<OnceLock<WeakStore>>,
    pub clock_offset: GaugeVec,
    pub clock_out_of_bounds: IntGauge,
    pub clock_probe_failures: IntCounter,
    pub peer_calls_refused: IntCounter,
    /// Client port calls refused, by `reason`: [`UNAUTHENTICATED`] or [`PERMISSION_DENIED`].
    pub client_calls_refused: IntCounterVec,
    pub tokens_file_reload_failures: IntCounter,
}

/// The prefix of every metric's name.
pub const NAMESPACE: &str = "hourglass";
/// The per-stage latency histograms (names without [`NAMESPACE`]), each labelled `stage`.
pub const FIRE_STAGES: &str = "fire_stage_seconds";
pub const SCHEDULE_STAGES: &str = "schedule_stage_seconds";
pub const RAFT_STAGES: &str = "raft_stage_seconds";
pub const STAGE_HISTOGRAMS: [&str; 3] = [FIRE_STAGES, SCHEDULE_STAGES, RAFT_STAGES];

/// `reason` of [`Metrics::client_calls_refused`]: no or unknown credentials.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// `reason` of [`Metrics::client_calls_refused`]: a call outside the caller's role.
pub const PERMISSION_DENIED: &str = "permission_denied";

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

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
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
            Some(NAMESPACE.into()),
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
        let client_calls_refused = IntCounterVec::new(
            Opts::new(
                "client_calls_refused_total",
                "Client port calls refused by authentication (reason unauthenticated) or by the caller's role (reason permission_denied).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(client_calls_refused.clone()))
            .expect("metric registered once");
        for reason in [UNAUTHENTICATED, PERMISSION_DENIED] {
            client_calls_refused.with_label_values(&[reason]);
        }
        let wal = Arc::new(OnceLock::new());
        r.register(Box::new(WalCounters::new(Arc::clone(&wal))))
            .expect("metric registered once");
        let store = Arc::new(OnceLock::new());
        r.register(Box::new(StoreGauges::new(Arc::clone(&store))))
            .expect("metric registered once");
        Metrics {
            fire_stages: Stages::new(
                r,
                FIRE_STAGES,
                "Time of each stage of a fire on the partition's leader: propose (fire_at to the Fire proposed, by cluster time; per timer), commit (proposed to committed and applied; per Fire), dispatch (applied to offered to the dispatcher; per Fire), stream_write (offered to sent into a worker's stream; per timer, first delivery after the offer).",
            ),
            schedule_stages: Stages::new(
                r,
                SCHEDULE_STAGES,
                "Time of each stage of a Schedule or ScheduleBatch call, per partition of the call: forward (received by a node that does not lead the partition to the leader's answer, on that node), propose (received by the leader to proposed), commit (proposed to committed and applied), respond (applied to the answer built).",
            ),
            raft_stages: Stages::new(
                r,
                RAFT_STAGES,
                "Time of each Raft stage inside a commit, any command: leader_log_flush and follower_log_flush (a log append to its fsync, of this node's own entries as leader or of another leader's as follower), replication (an AppendEntries request with entries to a follower, sent to answered, on the leader), apply (a batch of committed entries applied, on every replica).",
            ),
            wal,
            store,
            clock_offset,
            client_calls_refused,
            tokens_file_reload_failures: counter(
                r,
                "tokens_file_reload_failures_total",
                "Changes of auth.tokens_file that did not read or parse; the tokens before them stay in force.",
            ),
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
            peer_calls_refused: counter(
                r,
                "peer_calls_refused_total",
                "Raft transport calls refused: the caller's certificate names no member node.",
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
            acks_refused: counter(
                r,
                "acks_refused_total",
                "Acks refused because their stream did not hold the delivery (never delivered to it, held by another stream, already acknowledged, or timed out).",
            ),
            worker_streams_idle_closed: counter(
                r,
                "worker_streams_idle_closed_total",
                "Worker streams closed for sending nothing for timers.idle_stream_timeout after a delivery.",
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
            grpc_requests,
            schedule_forwards: counter_vec(
                r,
                "schedule_forwards_total",
                "Calls this node made to forward unary Schedules to the leader of their partition, by call: Schedule (one alone) or ScheduleBatch (several that arrived together).",
                &["call"],
            ),
            workers_connected: gauge(r, "workers_connected", "Worker streams connected to this node."),
            deliveries_in_memory: gauge(
                r,
                "deliveries_in_memory",
                "Fired timers the dispatcher holds in memory, waiting for a worker or for an ack.",
            ),
            deliveries_in_memory_bytes: gauge(
                r,
                "deliveries_in_memory_bytes",
                "Payload bytes of the fired timers the dispatcher holds in memory.",
            ),
            deliveries_in_memory_max: gauge(
                r,
                "deliveries_in_memory_max",
                "The most fired timers the dispatcher held in memory at once since the node started.",
            ),
            registry,
        }
    }

    /// Counts one public request with its outcome.
    pub fn request(&self, method: &str, code: tonic::Code) {
        self.grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }

    /// Reports the work of the node's log writer from now on.
    pub fn count_wal(&self, stats: Arc<SyncStats>) {
        let _ = self.wal.set(stats);
    }

    /// Reports the memory and disk of the node's RocksDB from now on.
    pub fn watch_store(&self, store: &Store) {
        let _ = self.store.set(store.downgrade());
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

/// `wal_fsyncs_total` and `wal_appends_total`: counters of the log writer (`LogSyncer`), which
/// counts in its own thread without knowing of Prometheus; read at each scrape.
struct WalCounters {
    source: Arc<OnceLock<Arc<SyncStats>>>,
    fsyncs: IntCounter,
    appends: IntCounter,
    /// Serializes scrapes, so two cannot add the same increase twice.
    update: Mutex<()>,
}

impl WalCounters {
    fn new(source: Arc<OnceLock<Arc<SyncStats>>>) -> Self {
        WalCounters {
            source,
            fsyncs: IntCounter::new("wal_fsyncs_total", "WAL fsyncs since the node started.")
                .expect("valid metric"),
            appends: IntCounter::new(
                "wal_appends_total",
                "Raft log appends made durable since the node started; per fsync, how many appends one fsync covered.",
            )
            .expect("valid metric"),
            update: Mutex::new(()),
        }
    }
}

impl Collector for WalCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.fsyncs
            .desc()
            .into_iter()
            .chain(self.appends.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(stats) = self.source.get() {
            let _update = self.update.lock().unwrap_or_else(|e| e.into_inner());
            let (fsyncs, appends) = stats.get();
            // The writer's totals only grow: the counters follow them.
            self.fsyncs.inc_by(fsyncs.saturating_sub(self.fsyncs.get()));
            self.appends
                .inc_by(appends.saturating_sub(self.appends.get()));
        }
        let mut families = self.fsyncs.collect();
        families.extend(self.appends.collect());
        families
    }
}

/// `store_memory_bytes{kind}`, `store_disk_bytes` and `store_table_bytes{column_family}`: what
/// RocksDB holds in memory (the part of the process's memory bounded by its budgets), what the
/// data directory holds on disk, and how much of it is each column family's tables; read at
/// each scrape.
struct StoreGauges {
    source: Arc<OnceLock<WeakStore>>,
    memory: IntGaugeVec,
    disk: IntGauge,
    tables: IntGaugeVec,
}

impl StoreGauges {
    fn new(source: Arc<OnceLock<WeakStore>>) -> Self {
        StoreGauges {
            source,
            memory: IntGaugeVec::new(
                Opts::new(
                    "store_memory_bytes",
                    "Memory held by RocksDB, by kind: memtables, block_cache, table_readers.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            disk: IntGauge::new(
                "store_disk_bytes",
                "Bytes of every file under the node's data directory (tables, write-ahead log, snapshots).",
            )
            .expect("valid metric"),
            tables: IntGaugeVec::new(
                Opts::new(
                    "store_table_bytes",
                    "Bytes of RocksDB table files, by column family (part of store_disk_bytes).",
                ),
                &["column_family"],
            )
            .expect("valid metric"),
        }
    }
}

impl Collector for StoreGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.memory
            .desc()
            .into_iter()
            .chain(self.disk.desc())
            .chain(self.tables.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(store) = self.source.get().and_then(WeakStore::upgrade) {
            // A failed reading leaves the last value: a scrape never fails on it.
            if let Ok(m) = store.memory() {
                for (kind, bytes) in [
                    ("memtables", m.memtables),
                    ("block_cache", m.block_cache),
                    ("table_readers", m.table_readers),
                ] {
                    self.memory.with_label_values(&[kind]).set(bytes as i64);
                }
            }
            if let Ok(bytes) = store.disk_bytes() {
                self.disk.set(bytes as i64);
            }
            if let Ok(tables) = store.table_bytes() {
                for (cf, bytes) in tables {
                    self.tables.with_label_values(&[cf]).set(bytes as i64);
                }
            }
        }
        let mut families = self.memory.collect();
        families.extend(self.disk.collect());
        families.extend(self.tables.collect());
        families
    }
}

/// The package whose services [`CountRequestsLayer`] counts.
const PUBLIC_PACKAGE: &str = "/hourglass.v1.";

/// A tower layer for the gRPC server counting every call of the public services
/// (`hourglass.v1.*`) in `grpc_requests_total{method, code}`. The code is the handler's
/// answer: an error status, or OK once a response (for Subscribe, the stream) is under way.
/// Health, reflection and the internal transport are not counted.
#[derive(Clone)]
pub struct CountRequestsLayer {
    metrics: Arc<Metrics>,
}

impl CountRequestsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        CountRequestsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for CountRequests<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = public_method(request.uri().path()).map(str::to_owned);
        let answer = self.inner.call(request);
        let Some(method) = method else {
            return Box::pin(answer);
        };
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => response_code(response),
                Err(_) => tonic::Code::Unknown,
            };
            // Unknown methods are answered UNIMPLEMENTED: one label for all of them, so no
            // caller can grow the metric without bound.
            let method = if code == tonic::Code::Unimplemented {
                "unimplemented"
            } else {
                method.as_str()
            };
            metrics.request(method, code);
            answer
        })
    }
}

/// `Schedule` for `/hourglass.v1.Timers/Schedule`; `None` outside the public package.
fn public_method(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(PUBLIC_PACKAGE)?;
    let (_service, method) = rest.split_once('/')?;
    Some(method)
}

/// The status of a gRPC response from its headers: an error answer is "trailers-only", its
/// `grpc-status` in the headers; a response without one is under way, OK so far.
fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    if response.status() != http::StatusCode::OK {
        return tonic::Code::Unknown;
    }
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;
    use tower_service::Service;

    fn scrape(m: &Metrics) -> String {
        m.render()
    }

    #[tokio::test]
    async fn the_layer_counts_public_calls_by_method_and_code() {
        let metrics = Arc::new(Metrics::new(1));
        let inner = tower_service_fn(|request: http::Request<()>| {
            let status = match request.uri().path() {
                "/hourglass.v1.Timers/Get" => None,
                "/hourglass.v1.Timers/Cancel" => Some("5"),
                _ => Some("12"),
            };
            let mut response = http::Response::new(());
            if let Some(code) = status {
                response
                    .headers_mut()
                    .insert("grpc-status", code.parse().unwrap());
            }
            response
        });
        let mut service = CountRequestsLayer::new(Arc::clone(&metrics)).layer(inner);
        for path in [
            "/hourglass.v1.Timers/Get",
            "/hourglass.v1.Timers/Get",
            "/hourglass.v1.Timers/Cancel",
            "/hourglass.v1.Timers/NoSuchMethod",
            "/hourglass.internal.v1.RaftTransport/Vote",
            "/grpc.health.v1.Health/Check",
        ] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            service.call(request).await.unwrap();
        }
        let text = scrape(&metrics);
        assert!(
            text.contains(r#"hourglass_grpc_requests_total{code="Ok",method="Get",node_id="1"} 2"#),
            "{text}"
        );
        assert!(text.contains(
            r#"hourglass_grpc_requests_total{code="NotFound",method="Cancel",node_id="1"} 1"#
        ));
        assert!(text.contains(
            r#"hourglass_grpc_requests_total{code="Unimplemented",method="unimplemented",node_id="1"} 1"#
        ));
        assert!(!text.contains("Vote") && !text.contains("Check"), "{text}");
    }

    #[test]
    fn wal_figures_are_counters() {
        let metrics = Metrics::new(1);
        let text = scrape(&metrics);
        assert!(
            text.contains("# TYPE hourglass_wal_fsyncs_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE hourglass_wal_appends_total counter"));
        assert!(text.contains("hourglass_wal_fsyncs_total{node_id=\"1\"} 0"));
    }

    /// A service answering each request with `f`.
    fn tower_service_fn<F>(f: F) -> ServiceFn<F> {
        ServiceFn(f)
    }

    #[derive(Clone)]
    struct ServiceFn<F>(F);

    impl<F, Req, Res> Service<Req> for ServiceFn<F>
    where
        F: FnMut(Req) -> Res,
    {
        type Response = Res;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Res, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Req) -> Self::Future {
            std::future::ready(Ok((self.0)(request)))
        }
    }
}
