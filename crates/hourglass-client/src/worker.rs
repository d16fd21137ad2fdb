//! A worker: receives fired timers of one queue from every node and acknowledges them.
//!
//! Each node delivers the fired timers of the partitions it leads, so a [`Worker`] keeps one
//! subscription per node listed by `Admin.ClusterStatus`, reconnects when a stream breaks, and
//! follows the node list as it changes. Deliveries are at least once: handle duplicates (same
//! workflow and timer id, higher attempt) idempotently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hourglass_proto::v1;
use hourglass_proto::v1::workers_client::WorkersClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{channel_for, hints, Client, Result, Tls};

/// How a worker subscribes.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue: String,
    /// A name for the server's logs.
    pub worker_id: String,
    /// Deliveries each node may have outstanding to this worker.
    pub credits: u32,
    /// How often the node list is refreshed.
    pub refresh: Duration,
}

impl WorkerOptions {
    pub fn new(queue: impl Into<String>) -> Self {
        WorkerOptions {
            queue: queue.into(),
            worker_id: format!("worker-{}", std::process::id()),
            credits: 64,
            refresh: Duration::from_secs(5),
        }
    }
}

/// One fired timer handed to the worker. Call [`Delivery::ack`] once it is handled; without an
/// ack it is delivered again after the cluster's ack timeout.
pub struct Delivery {
    pub timer: v1::Delivery,
    acks: mpsc::UnboundedSender<v1::WorkerMessage>,
}

impl Delivery {
    /// Acknowledges the delivery on the stream it came from. Returns false when that stream is
    /// gone, in which case the timer will be delivered again.
    pub fn ack(&self) -> bool {
        self.acks
            .send(v1::WorkerMessage {
                message: Some(v1::worker_message::Message::Ack(v1::Ack {
                    workflow_id: self.timer.workflow_id.clone(),
                    timer_id: self.timer.timer_id.clone(),
                })),
            })
            .is_ok()
    }
}

/// A running subscription to every node. Dropping it ends the subscriptions.
pub struct Worker {
    deliveries: mpsc::Receiver<Delivery>,
    supervisor: JoinHandle<()>,
}

impl Worker {
    /// Subscribes to every node of the cluster `client` talks to.
    pub async fn start(client: Arc<Client>, options: WorkerOptions) -> Result<Worker> {
        // Fail fast when the cluster cannot be reached at all.
        let status = client.cluster_status().await?;
        let (tx, rx) = mpsc::channel(options.credits.max(1) as usize * 4);
        let supervisor = tokio::spawn(supervise(client, options, status, tx));
        Ok(Worker {
            deliveries: rx,
            supervisor,
        })
    }

    /// The next delivery from any node; `None` once the worker is shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

struct Streams(HashMap<String, JoinHandle<()>>);

impl Drop for Streams {
    fn drop(&mut self) {
        for (_, task) in self.0.drain() {
            task.abort();
        }
    }
}

async fn supervise(
    client: Arc<Client>,
    options: WorkerOptions,
    mut status: v1::ClusterStatusResponse,
    tx: mpsc::Sender<Delivery>,
) {
    let mut streams = Streams(HashMap::new());
    loop {
        let addresses: Vec<String> = status.nodes.iter().map(|n| n.address.clone()).collect();
        streams.0.retain(|addr, task| {
            let keep = addresses.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in addresses {
            streams.0.entry(addr.clone()).or_insert_with(|| {
                tokio::spawn(subscribe_to(
                    addr,
                    options.clone(),
                    tx.clone(),
                    client.tls.clone(),
                ))
            });
        }
        tokio::time::sleep(options.refresh).await;
        if tx.is_closed() {
            return;
        }
        if let Ok(s) = client.cluster_status().await {
            status = s;
        }
    }
}

/// Waits before resubscribing to a node: exponential from 100 ms to 5 s, each stretched by a
/// random part of itself, so the workers of a restarted node do not all return at once.
fn resubscribe_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keeps one subscription to one node alive.
async fn subscribe_to(
    address: String,
    options: WorkerOptions,
    tx: mpsc::Sender<Delivery>,
    tls: Option<Tls>,
) {
    let mut backoff = resubscribe_backoff();
    loop {
        let mut connected = false;
        let mut asked = None;
        if let Err(e) = stream_once(&address, &options, &tx, tls.as_ref(), &mut connected).await {
            let code = e.code();
            asked = hints(&e.details()).retry_delay;
            if matches!(
                code,
                Some(tonic::Code::InvalidArgument | tonic::Code::Unimplemented)
            ) {
                tracing::warn!(%address, error = %e, "worker subscription refused");
            } else {
                tracing::debug!(%address, error = %e, "worker stream ended");
            }
        }
        if tx.is_closed() {
            return;
        }
        // A stream that was up starts the waits over.
        if connected {
            backoff = resubscribe_backoff();
        }
        let wait = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(wait.max(asked.unwrap_or_default())).await;
    }
}

async fn stream_once(
    address: &str,
    options: &WorkerOptions,
    tx: &mpsc::Sender<Delivery>,
    tls: Option<&Tls>,
    connected: &mut bool,
) -> Result<()> {
    let channel = channel_for(address, tls)?;
    let (out, out_rx) = mpsc::unbounded_channel();
    let _ = out.send(v1::WorkerMessage {
        message: Some(v1::worker_message::Message::Start(v1::SubscribeStart {
            queue: options.queue.clone(),
            worker_id: options.worker_id.clone(),
            credits: options.credits,
        })),
    });
    let mut inbound = WorkersClient::new(channel)
        .subscribe(UnboundedReceiverStream::new(out_rx))
        .await
        .map_err(crate::Error::from)?
        .into_inner();
    *connected = true;
    while let Some(timer) = inbound.message().await.map_err(crate::Error::from)? {
        let delivery = Delivery {
            timer,
            acks: out.clone(),
        };
        if tx.send(delivery).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
