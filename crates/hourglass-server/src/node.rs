//! A running node: its host, its gRPC port and its HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;

use hourglass_proto::internal::raft_transport_server::RaftTransportServer;
use hourglass_proto::v1::admin_server::AdminServer;
use hourglass_proto::v1::timers_server::TimersServer;
use hourglass_proto::v1::workers_server::WorkersServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info};

use crate::admin::AdminService;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::timers::TimersService;
use crate::transport::TransportService;
use crate::workers::WorkersService;

pub struct Node {
    host: Arc<Host>,
    grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
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
        let mut grpc_stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
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
        let node = Node {
            host,
            grpc_addr,
            stop,
            tasks,
        };
        if let Err(e) = node.host.start().await {
            node.shutdown().await;
            return Err(e);
        }
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
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.host.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
