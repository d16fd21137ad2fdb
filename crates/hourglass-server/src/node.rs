//! A running node: its host, its client port, its peer port and its HTTP port.
//!
//! With TLS, the client port's public services authenticate every call (`client_auth.rs`);
//! health and reflection stay open, for probes and tools.
//!
//! The peer port serves the internal Raft transport and nothing else; the client port never
//! serves it. Besides the public services, the client port serves the standard
//! `grpc.health.v1.Health` (a status per public service and `""` for the node: NOT_SERVING
//! while starting and shutting down, SERVING in between) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`) of the public API only, so `grpcurl` and
//! `grpc_health_probe` work without the proto files.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hourglass_proto::internal::raft_transport_server::RaftTransportServer;
use hourglass_proto::v1::admin_server::AdminServer;
use hourglass_proto::v1::timers_server::TimersServer;
use hourglass_proto::v1::workers_server::WorkersServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::admin::AdminService;
use crate::client_auth::{ClientAuth, TOKENS_FILE_POLL};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::metrics::CountRequestsLayer;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::timers::TimersService;
use crate::tls::{PeerAuth, Tls};
use crate::transport::TransportService;
use crate::workers::WorkersService;

/// Most bytes of one request message on the client port (tonic's default, made explicit):
/// larger ones are refused OUT_OF_RANGE before they are decoded. A Schedule's payload is at
/// most `max_payload_bytes` (64 KiB by default) and a ScheduleBatch's payloads 3 MiB, so
/// every valid request fits. The peer port decodes up to [`MAX_RAFT_MESSAGE_BYTES`].
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

pub struct Node {
    host: Arc<Host>,
    grpc_addr: SocketAddr,
    peer_addr: SocketAddr,
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

fn local_addr(listener: &tokio::net::TcpListener, addr: SocketAddr) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

/// A gRPC server with the node's connection settings and, when TLS is on, `tls`.
fn server_builder(config: &NodeConfig, tls: Option<ServerTlsConfig>) -> Result<Server> {
    let grpc = &config.grpc;
    let ms = std::time::Duration::from_millis;
    // Keepalive closes connections whose peer stopped answering (a SIGSTOPped or hung
    // worker, a vanished host): their worker streams end and deliveries go to others.
    let builder = Server::builder()
        .http2_keepalive_interval(Some(ms(grpc.http2_keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(ms(grpc.http2_keepalive_timeout_ms)));
    match tls {
        Some(tls) => builder
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("tls: {e}"))),
        None => Ok(builder),
    }
}

/// The connections `listener` accepts, with the node's socket options.
fn incoming(listener: tokio::net::TcpListener, config: &NodeConfig) -> Result<TcpIncoming> {
    let keepalive = std::time::Duration::from_millis(config.grpc.tcp_keepalive_ms);
    // Socket options apply only through tonic's own incoming stream: the builder's
    // `tcp_nodelay`/`tcp_keepalive` are ignored for a listener bound by us.
    TcpIncoming::from_listener(listener, true, Some(keepalive))
        .map_err(|e| Error::Internal(format!("grpc listener: {e}")))
}

/// Resolves once `stopped` turns true.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn spawn_server(
    server: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            error!(error = %e, "grpc server failed");
        }
    })
}

impl Node {
    /// Opens the data directory, serves the ports, and starts the Raft groups. Returns once the
    /// node has joined its cluster (a new node waits for its peers to answer).
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let config = config.validate()?;
        let host = Host::open(config.clone())?;
        let listener = bind(config.listen).await?;
        let grpc_addr = local_addr(&listener, config.listen)?;
        let peer_listener = bind(config.peer_listen).await?;
        let peer_addr = local_addr(&peer_listener, config.peer_listen)?;
        let tls = host.peers.tls().cloned();
        let client_auth = ClientAuth::new(&config, Arc::clone(&host.metrics))?;
        let auth_required = client_auth.is_required();
        if tls.is_none() {
            warn!(
                client_port = %grpc_addr,
                peer_port = %peer_addr,
                "TLS IS OFF: both ports are plaintext and unauthenticated; whoever can reach the \
                 client port may call everything, and whoever can reach the peer port can forge \
                 Raft messages and corrupt or lose timers. For development only: set [tls] (ca, \
                 cert, key; see docs/operations.md, \"Security\")"
            );
        } else if !auth_required {
            warn!(
                client_port = %grpc_addr,
                "AUTHENTICATION IS OPTIONAL (auth.required = false): calls without credentials \
                 may do everything on the client port"
            );
        }
        if let Some(file) = client_auth.tokens_file() {
            info!(file = %file.display(), tokens = client_auth.token_count(), "bearer tokens loaded");
        }
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let (mut health, health_service) = tonic_health::server::health_reporter();
        set_health(&mut health, ServingStatus::NotServing).await;
        let (reflection_v1, reflection_v1alpha) = reflection()?;

        let client_server = server_builder(&config, tls.as_ref().map(Tls::client_server))?
            .layer(CountRequestsLayer::new(Arc::clone(&host.metrics)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                TimersServer::new(TimersService::new(Arc::clone(&host)))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
                client_auth.clone(),
            ))
            .add_service(InterceptedService::new(
                AdminServer::new(AdminService {
                    host: Arc::clone(&host),
                })
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                client_auth.clone(),
            ))
            .add_service(InterceptedService::new(
                WorkersServer::new(WorkersService {
                    host: Arc::clone(&host),
                })
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                client_auth.clone(),
            ));
        let peer_auth = PeerAuth {
            tls: tls.is_some(),
            members: config.node_ids(),
            refused: host.metrics.peer_calls_refused.clone(),
        };
        let peer_server = server_builder(&config, tls.as_ref().map(Tls::peer_server))?.add_service(
            InterceptedService::new(
                RaftTransportServer::new(TransportService {
                    host: Arc::clone(&host),
                })
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
                peer_auth,
            ),
        );
        tasks.push(spawn_server(client_server.serve_with_incoming_shutdown(
            incoming(listener, &config)?,
            until(stopped.clone()),
        )));
        tasks.push(spawn_server(peer_server.serve_with_incoming_shutdown(
            incoming(peer_listener, &config)?,
            until(stopped.clone()),
        )));

        if client_auth.tokens_file().is_some() {
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let mut poll = tokio::time::interval(TOKENS_FILE_POLL);
                loop {
                    tokio::select! {
                        _ = poll.tick() => client_auth.reload_if_changed(),
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }));
        }

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
            peer_addr,
            health,
            stop,
            tasks,
        };
        if let Err(e) = node.host.start().await {
            node.shutdown().await;
            return Err(e);
        }
        set_health(&mut node.health, ServingStatus::Serving).await;
        info!(
            node_id = config.node_id,
            grpc = %grpc_addr,
            peer = %peer_addr,
            http = ?config.http_listen,
            tls = tls.is_some(),
            auth_required,
            "node started"
        );
        Ok(node)
    }

    /// Where the client port listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the peer port listens.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
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
