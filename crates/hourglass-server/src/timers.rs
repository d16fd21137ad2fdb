//! The public `Timers` service.

use std::sync::Arc;

use hourglass_proto::v1;
use hourglass_proto::v1::timers_client::TimersClient;
use hourglass_proto::v1::timers_server::Timers;
use hourglass_types::{partition_for, Command, CommandResponse, Limits};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::Error;
use crate::routing::{Router, Target, HOPS};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

pub struct TimersService {
    router: Router,
    limits: Limits,
}

impl TimersService {
    pub fn new(host: Arc<crate::host::Host>) -> Self {
        let limits = Limits {
            max_payload_bytes: host.config.max_payload_bytes,
        };
        TimersService {
            router: Router::new(host),
            limits,
        }
    }

    fn partition(&self, workflow_id: &str) -> u32 {
        partition_for(workflow_id, self.router.host.config.partitions)
    }

    fn client(&self, node: u64) -> Result<TimersClient<tonic::transport::Channel>, Status> {
        self.router
            .host
            .peers
            .channel(node)
            .map(TimersClient::new)
            .ok_or_else(|| Status::internal(format!("node {node} is not a configured peer")))
    }

    /// The same request, marked as forwarded once more, with the node's own deadline.
    fn forwarded<T>(&self, message: T, hops: u32) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut().insert(HOPS, (hops + 1).into());
        req.set_timeout(
            self.router.host.config.request_timeout() + std::time::Duration::from_secs(1),
        );
        req
    }
}

fn hops<T>(req: &Request<T>) -> u32 {
    req.metadata()
        .get(HOPS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Timers for TimersService {
    async fn schedule(
        &self,
        request: Request<v1::ScheduleRequest>,
    ) -> Result<Response<v1::ScheduleResponse>, Status> {
        let result = self.do_schedule(request).await;
        self.router.host.metrics.request("Schedule", &result);
        result
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        let result = self.do_cancel(request).await;
        self.router.host.metrics.request("Cancel", &result);
        result
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let result = self.do_get(request).await;
        self.router.host.metrics.request("Get", &result);
        result
    }

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let result = self.do_list(request).await;
        self.router.host.metrics.request("List", &result);
        result
    }
}

impl TimersService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_schedule(
        &self,
        request: Request<v1::ScheduleRequest>,
    ) -> Result<Response<v1::ScheduleResponse>, Status> {
        let hops = hops(&request);
        let message = request.into_inner();
        let partition = self.partition(&message.workflow_id);
        // Validate on the first node, so bad input never travels.
        let command = convert::schedule_command(message.clone(), &self.limits, convert::now_ms())
            .map_err(Error::from)?;
        match self.router.target(partition, hops)? {
            Target::Remote(node) => self.client(node)?.schedule(self.forwarded(message, hops)).await,
            Target::Local(group) => match self.router.commit(partition, group, command).await? {
                CommandResponse::Scheduled { timer, created } => {
                    if created {
                        self.router.host.metrics.timers_scheduled.inc();
                    }
                    Ok(Response::new(v1::ScheduleResponse {
                        timer: Some(convert::timer(timer, partition)),
                        created,
                    }))
                }
                CommandResponse::AlreadyExists { existing } => Err(Error::AlreadyExists(format!(
                    "timer {:?}/{:?} already exists with a different definition (queue {:?}, fire_at {} ms); \
                     schedule under another timer_id",
                    existing.key.workflow_id, existing.key.timer_id, existing.definition.queue, existing.fire_at_ms
                ))
                .into()),
                other => Err(Status::internal(format!("unexpected schedule outcome {other:?}"))),
            },
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        let hops = hops(&request);
        let message = request.into_inner();
        let key = convert::timer_key(message.workflow_id.clone(), message.timer_id.clone())
            .map_err(Error::from)?;
        let partition = self.partition(&key.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => {
                self.client(node)?
                    .cancel(self.forwarded(message, hops))
                    .await
            }
            Target::Local(group) => {
                let received_at_ms = convert::now_ms();
                let command = Command::Cancel {
                    key,
                    received_at_ms,
                };
                let (outcome, timer) = match self.router.commit(partition, group, command).await? {
                    CommandResponse::Cancelled { timer } => {
                        // Repeated cancels find an older finish time.
                        if timer.finished_at_ms == Some(received_at_ms) {
                            self.router.host.metrics.timers_cancelled.inc();
                        }
                        (v1::CancelOutcome::Cancelled, timer)
                    }
                    CommandResponse::AlreadyFired { timer } => {
                        (v1::CancelOutcome::AlreadyFired, timer)
                    }
                    CommandResponse::NotFound => {
                        return Err(Error::NotFound(format!(
                            "no timer {:?}/{:?}",
                            message.workflow_id, message.timer_id
                        ))
                        .into())
                    }
                    other => {
                        return Err(Status::internal(format!(
                            "unexpected cancel outcome {other:?}"
                        )))
                    }
                };
                Ok(Response::new(v1::CancelResponse {
                    outcome: outcome as i32,
                    timer: Some(convert::timer(timer, partition)),
                }))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let hops = hops(&request);
        let message = request.into_inner();
        let key = convert::timer_key(message.workflow_id.clone(), message.timer_id.clone())
            .map_err(Error::from)?;
        let partition = self.partition(&key.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => self.client(node)?.get(self.forwarded(message, hops)).await,
            Target::Local(group) => {
                self.router.read_barrier(partition, group).await?;
                let record = self
                    .router
                    .host
                    .store
                    .get_timer(partition, &key)
                    .map_err(Error::from)?
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "no timer {:?}/{:?}",
                            key.workflow_id, key.timer_id
                        ))
                    })?;
                Ok(Response::new(v1::GetResponse {
                    timer: Some(convert::timer(record, partition)),
                }))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let hops = hops(&request);
        let message = request.into_inner();
        // Validates the workflow id with a placeholder timer id.
        convert::timer_key(message.workflow_id.clone(), "-".into()).map_err(Error::from)?;
        if message.page_size > MAX_PAGE_SIZE {
            return Err(Error::from(hourglass_types::Error::invalid(
                "page_size",
                format!("is {}, at most {MAX_PAGE_SIZE} allowed", message.page_size),
            ))
            .into());
        }
        let after = convert::decode_page_token(&message.page_token).map_err(Error::from)?;
        let partition = self.partition(&message.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => self.client(node)?.list(self.forwarded(message, hops)).await,
            Target::Local(group) => {
                self.router.read_barrier(partition, group).await?;
                let size = if message.page_size == 0 {
                    DEFAULT_PAGE_SIZE
                } else {
                    message.page_size
                } as usize;
                // One extra row tells whether another page exists.
                let mut rows = self
                    .router
                    .host
                    .store
                    .list_timers(partition, &message.workflow_id, after.as_deref(), size + 1)
                    .map_err(Error::from)?;
                let more = rows.len() > size;
                rows.truncate(size);
                let next_page_token = match (more, rows.last()) {
                    (true, Some(last)) => convert::encode_page_token(&last.key.timer_id),
                    _ => String::new(),
                };
                Ok(Response::new(v1::ListResponse {
                    timers: rows
                        .into_iter()
                        .map(|r| convert::timer(r, partition))
                        .collect(),
                    next_page_token,
                }))
            }
        }
    }
}
