//! Helpers of the tests of a secured cluster (TLS, certificates, tokens, roles), whoever
//! started it: [`crate::Cluster`] or `deploy/local-cluster.sh up --tls`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hourglass_client::v1;
use hourglass_client::v1::workers_client::WorkersClient;
use hourglass_proto::internal::raft_transport_client::RaftTransportClient;
use hourglass_proto::internal::HelloRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// The status code of a refused call, None when it succeeded.
pub fn code<T: std::fmt::Debug>(r: hourglass_client::Result<T>) -> Option<Code> {
    match r {
        Ok(_) => None,
        Err(e) => Some(e.code().unwrap_or(Code::Unknown)),
    }
}

/// Waits until `check` holds, polling (the nodes reread the tokens file every 2 s).
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        if Instant::now() > deadline {
            bail!("{what} did not happen within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// A channel to `addr` over TLS, trusting `ca` for node `node`'s name, presenting `identity`.
pub async fn tls_channel(
    addr: &str,
    ca: &Path,
    node: u64,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name(format!("node-{node}"));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// What a Hello on node `node`'s peer port `peer_addr` answers to a caller presenting
/// `identity` and trusting `ca`, or a failed connection as UNAVAILABLE.
pub async fn peer_hello(
    peer_addr: &str,
    node: u64,
    partitions: u32,
    ca: &Path,
    identity: (&Path, &Path),
) -> Result<(), Code> {
    let channel = tls_channel(peer_addr, ca, node, Some(identity))
        .await
        .map_err(|_| Code::Unavailable)?;
    RaftTransportClient::new(channel)
        .hello(HelloRequest {
            from_node: node,
            partition_count: partitions,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

/// How a test's caller proves who it is on the client port.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and its key.
    Certificate(&'a Path, &'a Path),
}

/// A worker's stream to queue `queue` on node `node` (client port `addr`), presenting
/// `credential`: the sender of its further messages (acks) and its deliveries.
pub async fn worker_stream(
    addr: &str,
    node: u64,
    ca: &Path,
    credential: Credential<'_>,
    queue: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<v1::WorkerMessage>,
        tonic::Streaming<v1::Delivery>,
    ),
    Code,
> {
    let identity = match credential {
        Credential::Token(_) => None,
        Credential::Certificate(cert, key) => Some((cert, key)),
    };
    let channel = tls_channel(addr, ca, node, identity)
        .await
        .map_err(|_| Code::Unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let start = v1::WorkerMessage {
        message: Some(v1::worker_message::Message::Start(v1::SubscribeStart {
            queue: queue.into(),
            worker_id: "secure-test".into(),
            credits: 1,
        })),
    };
    tx.send(start).await.map_err(|_| Code::Internal)?;
    // The stream stays open while `tx` lives, so the node answers the subscription.
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Credential::Token(token) = credential {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Code::InvalidArgument)?,
        );
    }
    let deliveries = WorkersClient::new(channel)
        .subscribe(request)
        .await
        .map_err(|s| s.code())?
        .into_inner();
    Ok((tx, deliveries))
}

/// An ack of `workflow_id`/`timer_id`, for [`worker_stream`]'s sender.
pub fn ack(workflow_id: &str, timer_id: &str) -> v1::WorkerMessage {
    v1::WorkerMessage {
        message: Some(v1::worker_message::Message::Ack(v1::Ack {
            workflow_id: workflow_id.into(),
            timer_id: timer_id.into(),
        })),
    }
}
