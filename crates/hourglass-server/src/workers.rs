//! The public `Workers` service: a bidirectional stream per worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use hourglass_proto::v1;
use hourglass_proto::v1::workers_server::Workers;
use hourglass_types::{validate_queue, TimerKey};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::Call;
use crate::client_auth;
use crate::dispatch::Subscription;
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
        let caller = client_auth::caller(&request)?;
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
        client_auth::check(
            &caller,
            &Call::Subscribe {
                queue: &start.queue,
            },
            &self.host.metrics,
        )?;
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
        let Subscription {
            worker,
            deliveries,
            mut closed,
        } = dispatcher.subscribe(&start.queue, credits);
        info!(node_id = self.host.node_id, queue = %start.queue, worker = %worker_name, credits, "worker subscribed");

        // The response reads the dispatcher's bounded buffer directly: no unbounded hop in
        // between, so a worker that stops reading stops taking deliveries.
        let (end, ended) = oneshot::channel();
        let node_id = self.host.node_id;
        let idle_ms = self.host.config.timers.idle_stream_timeout_ms();
        let queue = start.queue;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(v1::WorkerMessage { message: Some(v1::worker_message::Message::Ack(ack)) })) => {
                            let key = TimerKey { workflow_id: ack.workflow_id, timer_id: ack.timer_id };
                            if let Err(refused) = dispatcher.ack(worker, &key) {
                                debug!(node_id, worker = %worker_name, ?refused, workflow_id = %key.workflow_id, timer_id = %key.timer_id, "ack refused: not held by this stream");
                            }
                        }
                        Ok(Some(_)) => {
                            let e = Error::from(hourglass_types::Error::invalid("start", "only acks may follow the first message, `start`"));
                            let _ = end.send(e.into());
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    },
                    // The dispatcher dropped the stream; its deliveries are already back there.
                    idle = &mut closed => {
                        if idle.is_ok() {
                            warn!(node_id, worker = %worker_name, %queue, idle_ms, "worker stream closed: no message after a delivery within the idle timeout");
                            let _ = end.send(Error::WorkerIdle { idle_ms }.into());
                        }
                        break;
                    }
                }
            }
            dispatcher.unsubscribe(worker);
            debug!(node_id, worker = %worker_name, "worker left");
        });
        Ok(Response::new(Box::pin(Outbound {
            deliveries,
            end: Some(ended),
        })))
    }
}

/// A stream's deliveries, as they leave the dispatcher's buffer; ended by the stream's task:
/// with its error, or quietly when the worker left.
struct Outbound {
    deliveries: mpsc::Receiver<v1::Delivery>,
    /// `None` once the stream ended.
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for Outbound {
    type Item = Result<v1::Delivery, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(end) = this.end.as_mut() else {
            return Poll::Ready(None);
        };
        // The end comes first: deliveries still buffered were given back to the dispatcher.
        if let Poll::Ready(ended) = Pin::new(end).poll(cx) {
            this.end = None;
            return Poll::Ready(ended.ok().map(Err));
        }
        match this.deliveries.poll_recv(cx) {
            Poll::Ready(Some(d)) => Poll::Ready(Some(Ok(d))),
            // The dispatcher dropped the stream: its task says how it ends, and wakes us.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};
    use tonic::Code;

    use super::*;

    fn delivery(timer_id: &str) -> v1::Delivery {
        v1::Delivery {
            timer_id: timer_id.into(),
            ..Default::default()
        }
    }

    /// Deliveries flow until the stream's task ends it; once it has, what is left in the
    /// buffer (given back to the dispatcher already) is never sent.
    #[tokio::test]
    async fn the_task_ends_the_stream_not_the_buffer() {
        let (tx, deliveries) = mpsc::channel(2);
        let (end, ended) = oneshot::channel();
        let mut out = Outbound {
            deliveries,
            end: Some(ended),
        };
        tx.send(delivery("t")).await.unwrap();
        assert_eq!(out.next().await.unwrap().unwrap().timer_id, "t");
        // The dispatcher dropped the stream: it waits for its task's word.
        drop(tx);
        assert!(out.next().now_or_never().is_none());
        end.send(Status::deadline_exceeded("idle")).unwrap();
        let e = out.next().await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded);
        assert!(out.next().await.is_none());

        // The error comes before anything still buffered.
        let (tx, deliveries) = mpsc::channel(2);
        let (end, ended) = oneshot::channel();
        let mut out = Outbound {
            deliveries,
            end: Some(ended),
        };
        tx.send(delivery("stale")).await.unwrap();
        end.send(Status::deadline_exceeded("idle")).unwrap();
        assert!(out.next().await.unwrap().is_err());
        assert!(out.next().await.is_none());

        // A task that ends without an error ends the stream quietly.
        let (_tx, deliveries) = mpsc::channel(2);
        let (end, ended) = oneshot::channel::<Status>();
        let mut out = Outbound {
            deliveries,
            end: Some(ended),
        };
        drop(end);
        assert!(out.next().await.is_none());
    }
}
