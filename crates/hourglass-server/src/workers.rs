//! The public `Workers` service: a bidirectional stream per worker.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hourglass_proto::v1;
use hourglass_proto::v1::workers_server::Workers;
use hourglass_types::{validate_queue, TimerKey};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::error::Error;
use crate::host::Host;

const DEFAULT_CREDITS: u32 = 64;
const MAX_CREDITS: u32 = 10_000;

pub struct WorkersService {
    pub host: Arc<Host>,
}

type DeliveryStream = Pin<Box<dyn Stream<Item = Result<v1::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl Workers for WorkersService {
    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<DeliveryStream>, Status> {
        self.start_stream(request).await.map_err(Status::from)
    }
}

impl WorkersService {
    async fn start_stream(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<DeliveryStream>, Error> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let start = match inbound
            .message()
            .await
            .map_err(|s| Error::Stream(Box::new(s)))?
        {
            Some(v1::WorkerMessage {
                message: Some(v1::worker_message::Message::Start(start)),
            }) => start,
            _ => {
                return Err(Error::from(hourglass_types::Error::invalid(
                    "start",
                    "the first message of a subscription must be `start`",
                )))
            }
        };
        validate_queue(&start.queue).map_err(Error::from)?;
        if start.credits > MAX_CREDITS {
            return Err(Error::from(hourglass_types::Error::invalid(
                "credits",
                format!("is {}, at most {MAX_CREDITS} allowed", start.credits),
            )));
        }
        let credits = if start.credits == 0 {
            DEFAULT_CREDITS
        } else {
            start.credits
        };
        let worker_name = if start.worker_id.is_empty() {
            peer
        } else {
            start.worker_id
        };
        let dispatcher = Arc::clone(&self.host.dispatcher);
        let (worker, mut deliveries) = dispatcher.subscribe(&start.queue, credits);
        info!(node_id = self.host.node_id, queue = %start.queue, worker = %worker_name, credits, "worker subscribed");

        let (tx, rx) = mpsc::channel(credits as usize + 1);
        let node_id = self.host.node_id;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    delivery = deliveries.recv() => match delivery {
                        Some(d) => if tx.send(Ok(d)).await.is_err() { break },
                        None => break,
                    },
                    message = inbound.message() => match message {
                        Ok(Some(v1::WorkerMessage { message: Some(v1::worker_message::Message::Ack(ack)) })) => {
                            let key = TimerKey { workflow_id: ack.workflow_id, timer_id: ack.timer_id };
                            dispatcher.ack(worker, &key);
                        }
                        Ok(Some(_)) => {
                            let e = Error::from(hourglass_types::Error::invalid("start", "only acks may follow the first message, `start`"));
                            let _ = tx.send(Err(e.into())).await;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            dispatcher.unsubscribe(worker);
            debug!(node_id, worker = %worker_name, "worker left");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
