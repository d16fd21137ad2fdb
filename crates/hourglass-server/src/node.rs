//! A running node: its host, its gRPC port and its HTTP port.
//!
//! Besides the public services and the internal transport, the gRPC port serves the standard
//! `grpc.health.v1.Health` (a status per public service and `""` for the node: NOT_SERVING
//! while starting and shutting down, SERVING in between) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`) of the public API only, so `grpcurl` and
//! `grpc_health_probe` work without the proto files.

use std::net::SocketAddr;
use std::sync::Arc;

use hourglass_proto::internal::raft_transport_server::RaftTransportServer;
use hourglass_proto::v1::admin_server::AdminServer;
use hourglass_proto::v1::timers_server::TimersServer;
use hourglass_proto::v1::workers_server::WorkersServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info};

use crate::admin::AdminService;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::metrics::CountRequestsLayer;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::timers::TimersService;
use crate::transport::TransportService;
use crate::workers::WorkersService;

pub struct Node {
    host: Arc<Host>,
    grpc_addr: SocketAddr,
    health: HealthReporter,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The names `grpc.health.v1.Health` answers for: the node (`""`) and each public service.
pub const HEALTH_SERVICES: [&str; 4] = [
    "",
    <TimersServer<TimersService> as NamedService>::NAME,
    <WorkersServer<WorkersService> as NamedService>::NAME,
    <AdminServer<AdminService> as NamedService>::NAME,
];

async fn set_health(health: &mut HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Server reflection of the public API and the health service, in both protocol versions
/// (grpcurl before 1.9 speaks only v1alpha). The internal transport is not described.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hourglass_proto::PUBLIC_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc's error details (messages only), so tools can print them.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let invalid = |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    Ok((
        builder().build_v1().map_err(invalid)?,
        builder().build_v1alpha().map_err(invalid)?,
    ))
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Node {
    /// Opens the data directory, serves the ports, and starts the Raft groups. Returns once the
    /// node has joined its cluster (a new node waits for its peers to answer).
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let config = config.validate()?;
        let host = Host::open(config.clone())?;
        let listener = bind(config.listen).await?;
        let grpc_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let (mut health, health_service) = tonic_health::server::health_reporter();
        set_health(&mut health, ServingStatus::NotServing).await;
        let (reflection_v1, reflection_v1alpha) = reflection()?;

        let grpc = &config.grpc;
        let ms = std::time::Duration::from_millis;
        // Keepalive closes connections whose peer stopped answering (a SIGSTOPped or hung
        // worker, a vanished host): their worker streams end and deliveries go to others.
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(ms(grpc.http2_keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(ms(grpc.http2_keepalive_timeout_ms)))
            .layer(CountRequestsLayer::new(Arc::clone(&host.metrics)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TimersServer::new(TimersService::new(Arc::clone(&host))))
            .add_service(AdminServer::new(AdminService {
                host: Arc::clone(&host),
            }))
            .add_service(WorkersServer::new(WorkersService {
                host: Arc::clone(&host),
            }))
            .add_service(
                RaftTransportServer::new(TransportService {
                    host: Arc::clone(&host),
                })
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            );
        // Socket options apply only through tonic's own incoming stream: the builder's
        // `tcp_nodelay`/`tcp_keepalive` are ignored for a listener bound by us.
        let incoming = TcpIncoming::from_listener(listener, true, Some(ms(grpc.tcp_keepalive_ms)))
            .map_err(|e| Error::Internal(format!("grpc listener: {e}")))?;
        let mut grpc_stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                error!(error = %e, "grpc server failed");
            }
        }));

        if let Some(http_addr) = config.http_listen {
            let listener = bind(http_addr).await?;
            let app = crate::http::router(Arc::clone(&host));
            let mut http_stop = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    error!(error = %e, "http server failed");
                }
            }));
        }

        host.start_clock();
        let mut node = Node {
            host,
            grpc_addr,
            health,
            stop,
            tasks,
        };
        if let Err(e) = node.host.start().await {
            node.shutdown().await;
            return Err(e);
        }
        set_health(&mut node.health, ServingStatus::Serving).await;
        info!(node_id = config.node_id, grpc = %grpc_addr, http = ?config.http_listen, "node started");
        Ok(node)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn node_id(&self) -> u64 {
        self.host.node_id
    }

    /// Stops serving and shuts the Raft groups down.
    pub async fn shutdown(mut self) {
        set_health(&mut self.health, ServingStatus::NotServing).await;
        let _ = self.stop.send(true);
        self.host.shutdown().await;
        // Ends open Health.Watch streams (after they saw NOT_SERVING): the server's graceful
        // shutdown waits for every open stream.
        for service in HEALTH_SERVICES {
            self.health.clear_service_status(service).await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
