//! The public `Timers` service.

use std::sync::Arc;
use std::time::Instant;

use hourglass_proto::v1;
use hourglass_proto::v1::timers_client::TimersClient;
use hourglass_proto::v1::timers_server::Timers;
use std::collections::BTreeMap;

use hourglass_types::{partition_for, Command, CommandResponse, Limits, TimerDefinition, TimerKey};
use tonic::{Request, Response, Status};

use crate::auth::Call;
use crate::client_auth;
use crate::combine::Combiner;
use crate::convert;
use crate::error::Error;
use crate::metrics::{ScheduleStage, Stages};
use crate::routing::{Router, Target, HOPS};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
const MAX_BATCH: usize = 1000;
/// Most encoded bytes of the timers of one List page: safely under the 4 MiB a gRPC client
/// decodes by default (tonic, grpc-go, grpcio), and under what a forwarding node's own client
/// decodes, with room for the page token and framing. 1,000 timers with 64 KiB payloads would
/// otherwise make a 64 MiB page that no default client can read.
const MAX_LIST_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Most payload bytes, summed over its timers, of one ScheduleBatch. Its timers of one
/// partition become one Raft entry, which every replica writes and sends whole; and with ids
/// and framing the request stays under the 4 MiB a node decodes (larger requests are refused
/// by gRPC itself, OUT_OF_RANGE).
const MAX_BATCH_PAYLOAD_BYTES: usize = 3 * 1024 * 1024;

/// One unary Schedule waiting for its Raft entry: the timer and when it was received.
type Proposal = (TimerKey, TimerDefinition, u64);
type Outcome = Result<CommandResponse, Error>;

/// Raft entries of unary Schedules one partition keeps in flight at once on its leader; more
/// Schedules arriving meanwhile wait and share the next entry.
const SCHEDULES_IN_FLIGHT: usize = 4;
/// Most unary Schedules sharing one entry: with payloads of up to 64 KiB, 4 MiB at most.
const SCHEDULES_PER_ENTRY: usize = 64;

/// A unary Schedule's answer, from the leader this node forwarded it to.
type Forwarded = Result<v1::ScheduleResponse, Error>;
/// Calls forwarding unary Schedules that a node keeps in flight to one leader; Schedules
/// arriving meanwhile wait and go together in the next ScheduleBatch.
const FORWARDS_IN_FLIGHT: usize = 4;

pub struct TimersService {
    router: Arc<Router>,
    limits: Limits,
    schedules: Arc<Combiner<u32, Proposal, Outcome>>,
    /// Unary Schedules forwarded to a leader, by its node id.
    forwards: Arc<Combiner<u64, v1::ScheduleRequest, Forwarded>>,
}

impl TimersService {
    pub fn new(host: Arc<crate::host::Host>) -> Self {
        let limits = Limits {
            max_payload_bytes: host.config.max_payload_bytes,
        };
        TimersService {
            router: Arc::new(Router::new(host)),
            limits,
            schedules: Arc::new(Combiner::new(SCHEDULES_IN_FLIGHT, SCHEDULES_PER_ENTRY)),
            forwards: Arc::new(Combiner::new(FORWARDS_IN_FLIGHT, MAX_BATCH)),
        }
    }

    fn stages(&self) -> &Stages<ScheduleStage> {
        &self.router.host.metrics.schedule_stages
    }

    fn partition(&self, workflow_id: &str) -> u32 {
        partition_for(workflow_id, self.router.host.config.partitions)
    }

    fn client(&self, node: u64) -> Result<TimersClient<tonic::transport::Channel>, Error> {
        peer_client(&self.router, node)
    }

    /// Whether the caller may call `method` on these workflows; checked before anything
    /// else, so a refused caller learns nothing of the request's validity.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        workflow_ids: Vec<&str>,
    ) -> Result<(), Error> {
        client_auth::check(
            &client_auth::caller(request)?,
            &Call::Timers {
                method,
                workflow_ids,
            },
            &self.router.host.metrics,
        )
    }

    fn forwarded<T>(&self, message: T, hops: u32) -> Request<T> {
        forward_request(&self.router, message, hops)
    }
}

fn peer_client(
    router: &Router,
    node: u64,
) -> Result<TimersClient<tonic::transport::Channel>, Error> {
    router
        .host
        .peers
        .channel(node)
        .map(TimersClient::new)
        .ok_or_else(|| Error::Internal(format!("node {node} is not a configured peer")))
}

/// The same request, marked as forwarded once more, with the node's own deadline.
fn forward_request<T>(router: &Router, message: T, hops: u32) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(HOPS, (hops + 1).into());
    req.set_timeout(router.host.config.request_timeout() + std::time::Duration::from_secs(1));
    req
}

/// How many of the items, in order, go in each call: at most `max_items` and, unless an item
/// is alone, at most `max_bytes` of payload per call.
fn split_calls(payload_bytes: &[usize], max_items: usize, max_bytes: usize) -> Vec<usize> {
    let mut calls = Vec::new();
    let (mut items, mut bytes) = (0, 0);
    for &size in payload_bytes {
        if items > 0 && (items == max_items || bytes + size > max_bytes) {
            calls.push(items);
            (items, bytes) = (0, 0);
        }
        items += 1;
        bytes += size;
    }
    if items > 0 {
        calls.push(items);
    }
    calls
}

/// Forwards first-hop unary Schedules to `node`, the leader of their partitions: one alone as
/// a Schedule, more as ScheduleBatch calls within a batch's limits, sent at once. One outcome
/// per request, in order; a failed one keeps the status the leader gave it, as a forwarded
/// Schedule's does.
async fn forward_schedules(
    router: &Router,
    node: u64,
    requests: Vec<v1::ScheduleRequest>,
) -> Vec<Forwarded> {
    let client = match peer_client(router, node) {
        Ok(client) => client,
        Err(e) => return requests.iter().map(|_| Err(e.duplicate())).collect(),
    };
    let sizes: Vec<usize> = requests.iter().map(|r| r.payload.len()).collect();
    let mut requests = requests.into_iter();
    let calls = split_calls(&sizes, MAX_BATCH, MAX_BATCH_PAYLOAD_BYTES)
        .into_iter()
        .map(|n| {
            let timers: Vec<_> = requests.by_ref().take(n).collect();
            let mut client = client.clone();
            async move {
                let forwards = &router.host.metrics.schedule_forwards;
                if let [_] = timers.as_slice() {
                    forwards.with_label_values(&["Schedule"]).inc();
                    let request = timers.into_iter().next().expect("one timer");
                    let answer = client.schedule(forward_request(router, request, 0)).await;
                    return vec![forwarded(node, answer).map(Response::into_inner)];
                }
                forwards.with_label_values(&["ScheduleBatch"]).inc();
                let request = forward_request(router, v1::ScheduleBatchRequest { timers }, 0);
                match forwarded(node, client.schedule_batch(request).await) {
                    Ok(response) if response.get_ref().results.len() == n => response
                        .into_inner()
                        .results
                        .into_iter()
                        .map(|r| match r.result {
                            Some(v1::schedule_batch_result::Result::Scheduled(r)) => Ok(r),
                            Some(v1::schedule_batch_result::Result::Error(e)) => {
                                Err(Error::Forwarded {
                                    node,
                                    status: Box::new(crate::status::from_batch_error(e)),
                                })
                            }
                            None => Err(Error::Internal(format!("node {node} gave no outcome"))),
                        })
                        .collect(),
                    Ok(response) => (0..n)
                        .map(|_| {
                            Err(Error::Internal(format!(
                                "node {node} answered {} outcomes for {n} timers",
                                response.get_ref().results.len()
                            )))
                        })
                        .collect(),
                    Err(e) => (0..n).map(|_| Err(e.duplicate())).collect(),
                }
            }
        })
        .collect::<Vec<_>>();
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Commits unary Schedules of `partition` as one entry (a plain `Schedule` when alone) and
/// returns one outcome per proposal. Delays of a group count from its latest receipt: a timer
/// may fire a few milliseconds later than alone, never earlier (G2).
async fn commit_schedules(
    router: &Router,
    partition: u32,
    proposals: Vec<Proposal>,
) -> Vec<Outcome> {
    let n = proposals.len();
    let Some(group) = router.host.group(partition) else {
        return (0..n)
            .map(|_| {
                Err(Error::Unavailable {
                    partition,
                    reason: "this node no longer holds the partition".into(),
                    leader: None,
                })
            })
            .collect();
    };
    let received_at_ms = proposals.iter().map(|p| p.2).max().unwrap_or_default();
    let command = match <[Proposal; 1]>::try_from(proposals) {
        Ok([(key, definition, received_at_ms)]) => Command::Schedule {
            key,
            definition,
            received_at_ms,
        },
        Err(proposals) => Command::ScheduleMany {
            timers: proposals.into_iter().map(|(k, d, _)| (k, d)).collect(),
            received_at_ms,
        },
    };
    match router.commit(partition, group, command).await {
        Ok(CommandResponse::Many(outcomes)) if outcomes.len() == n && n > 1 => {
            outcomes.into_iter().map(Ok).collect()
        }
        Ok(outcome) if n == 1 => vec![Ok(outcome)],
        Ok(other) => (0..n)
            .map(|_| {
                Err(Error::Internal(format!(
                    "unexpected schedule outcome {other:?}"
                )))
            })
            .collect(),
        Err(e) => (0..n).map(|_| Err(e.duplicate())).collect(),
    }
}

impl TimersService {
    /// The answer to one applied schedule, as Schedule returns it.
    fn schedule_outcome(
        &self,
        outcome: CommandResponse,
        partition: u32,
    ) -> Result<v1::ScheduleResponse, Error> {
        match outcome {
            CommandResponse::Scheduled { timer, created } => {
                if created {
                    self.router.host.metrics.timers_scheduled.inc();
                }
                Ok(v1::ScheduleResponse {
                    timer: Some(convert::timer(timer, partition)),
                    created,
                })
            }
            CommandResponse::AlreadyExists { existing } => Err(Error::AlreadyExists(format!(
                "timer {:?}/{:?} already exists with a different definition (queue {:?}, fire_at {} ms); \
                 schedule under another timer_id",
                existing.key.workflow_id, existing.key.timer_id, existing.definition.queue, existing.fire_at_ms
            ))),
            other => Err(Error::Internal(format!("unexpected schedule outcome {other:?}"))),
        }
    }

    /// Schedules the valid items of one partition: on this node when it leads, else through
    /// the leader (or a replica).
    async fn schedule_partition(
        &self,
        partition: u32,
        items: Vec<(usize, v1::ScheduleRequest, TimerKey, TimerDefinition)>,
        hops: u32,
        received_at_ms: u64,
        received: Instant,
    ) -> Vec<(usize, v1::ScheduleBatchResult)> {
        let fail_all = |items: &[(usize, v1::ScheduleRequest, TimerKey, TimerDefinition)],
                        e: Error| {
            let error = v1::BatchError::from(e);
            items
                .iter()
                .map(|(i, ..)| (*i, batch_result(error.clone())))
                .collect::<Vec<_>>()
        };
        let target = match self.router.target(partition, hops) {
            Ok(t) => t,
            Err(e) => return fail_all(&items, e),
        };
        match target {
            Target::Remote(node) => {
                let request = v1::ScheduleBatchRequest {
                    timers: items.iter().map(|(_, r, ..)| r.clone()).collect(),
                };
                let answer = match self.client(node) {
                    Ok(mut client) => client
                        .schedule_batch(self.forwarded(request, hops))
                        .await
                        .map_err(|status| Error::Forwarded {
                            node,
                            status: Box::new(status),
                        }),
                    Err(e) => Err(e),
                };
                self.stages()
                    .observe(ScheduleStage::Forward, received.elapsed());
                match answer {
                    Ok(response) => items
                        .iter()
                        .map(|(i, ..)| *i)
                        .zip(response.into_inner().results)
                        .collect(),
                    Err(e) => fail_all(&items, e),
                }
            }
            Target::Local(group) => {
                let command = Command::ScheduleMany {
                    timers: items
                        .iter()
                        .map(|(_, _, k, d)| (k.clone(), d.clone()))
                        .collect(),
                    received_at_ms,
                };
                let mut laps = self.stages().laps_from(received);
                laps.mark(ScheduleStage::Propose);
                let committed = self.router.commit(partition, group, command).await;
                if committed.is_ok() {
                    laps.mark(ScheduleStage::Commit);
                }
                let results = match committed {
                    Ok(CommandResponse::Many(outcomes)) => items
                        .iter()
                        .zip(outcomes)
                        .map(|((i, ..), outcome)| {
                            let result = match self.schedule_outcome(outcome, partition) {
                                Ok(r) => v1::schedule_batch_result::Result::Scheduled(r),
                                Err(e) => return (*i, batch_result(e.into())),
                            };
                            (
                                *i,
                                v1::ScheduleBatchResult {
                                    result: Some(result),
                                },
                            )
                        })
                        .collect(),
                    Ok(other) => fail_all(
                        &items,
                        Error::Internal(format!("unexpected batch outcome {other:?}")),
                    ),
                    Err(e) => return fail_all(&items, e),
                };
                laps.mark(ScheduleStage::Respond);
                results
            }
        }
    }

    async fn do_schedule_batch(
        &self,
        request: Request<v1::ScheduleBatchRequest>,
    ) -> Result<Response<v1::ScheduleBatchResponse>, Error> {
        let received = Instant::now();
        let ids = request.get_ref().timers.iter();
        self.authorize(
            &request,
            "ScheduleBatch",
            ids.map(|t| t.workflow_id.as_str()).collect(),
        )?;
        let hops = hops(&request);
        let timers = request.into_inner().timers;
        if timers.len() > MAX_BATCH {
            return Err(Error::from(hourglass_types::Error::invalid(
                "timers",
                format!("has {} items, at most {MAX_BATCH} allowed", timers.len()),
            )));
        }
        let payload_bytes: usize = timers.iter().map(|t| t.payload.len()).sum();
        if payload_bytes > MAX_BATCH_PAYLOAD_BYTES {
            return Err(Error::from(hourglass_types::Error::invalid(
                "timers.payload",
                format!(
                    "adds up to {payload_bytes} bytes over the batch, at most \
                     {MAX_BATCH_PAYLOAD_BYTES} allowed; split it into smaller batches"
                ),
            )));
        }
        let mut results: Vec<Option<v1::ScheduleBatchResult>> = vec![None; timers.len()];
        let mut valid = Vec::with_capacity(timers.len());
        for (i, item) in timers.into_iter().enumerate() {
            match convert::validate_schedule(item.clone(), &self.limits) {
                Ok(schedule) => valid.push((i, item, schedule)),
                Err(e) => results[i] = Some(batch_result(Error::from(e).into())),
            }
        }
        // Read only once something is valid: bad input is refused as such while the clock is
        // unknown.
        let now = if valid.is_empty() {
            0
        } else {
            self.router.host.cluster_now()?
        };
        let mut by_partition: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for (i, item, schedule) in valid {
            match schedule.at(now) {
                Ok(Command::Schedule {
                    key, definition, ..
                }) => by_partition
                    .entry(self.partition(&key.workflow_id))
                    .or_default()
                    .push((i, item, key, definition)),
                Ok(other) => {
                    results[i] = Some(batch_result(
                        Error::Internal(format!("unexpected command {other}")).into(),
                    ))
                }
                Err(e) => results[i] = Some(batch_result(Error::from(e).into())),
            }
        }
        let done = futures::future::join_all(by_partition.into_iter().map(|(partition, items)| {
            self.schedule_partition(partition, items, hops, now, received)
        }))
        .await;
        for (i, result) in done.into_iter().flatten() {
            results[i] = Some(result);
        }
        Ok(Response::new(v1::ScheduleBatchResponse {
            results: results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| batch_result(Error::Internal("no outcome".into()).into()))
                })
                .collect(),
        }))
    }
}

fn batch_result(error: v1::BatchError) -> v1::ScheduleBatchResult {
    v1::ScheduleBatchResult {
        result: Some(v1::schedule_batch_result::Result::Error(error)),
    }
}

/// The answer of the node a request was forwarded to; its failures keep that node's status.
fn forwarded<T>(node: u64, answer: Result<Response<T>, Status>) -> Result<Response<T>, Error> {
    answer.map_err(|status| Error::Forwarded {
        node,
        status: Box::new(status),
    })
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
        self.do_schedule(request).await.map_err(Status::from)
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        self.do_cancel(request).await.map_err(Status::from)
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        self.do_get(request).await.map_err(Status::from)
    }

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        self.do_list(request).await.map_err(Status::from)
    }

    async fn schedule_batch(
        &self,
        request: Request<v1::ScheduleBatchRequest>,
    ) -> Result<Response<v1::ScheduleBatchResponse>, Status> {
        self.do_schedule_batch(request).await.map_err(Status::from)
    }
}

impl TimersService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_schedule(
        &self,
        request: Request<v1::ScheduleRequest>,
    ) -> Result<Response<v1::ScheduleResponse>, Error> {
        let received = Instant::now();
        self.authorize(
            &request,
            "Schedule",
            vec![request.get_ref().workflow_id.as_str()],
        )?;
        let hops = hops(&request);
        let message = request.into_inner();
        let partition = self.partition(&message.workflow_id);
        // Validate on the first node, so bad input never travels.
        let schedule = convert::validate_schedule(message.clone(), &self.limits)?;
        let command = schedule.at(self.router.host.cluster_now()?)?;
        match self.router.target(partition, hops)? {
            // Forwarded again (the sender's view of the leader was stale): alone.
            Target::Remote(node) if hops > 0 => {
                let forwards = &self.router.host.metrics.schedule_forwards;
                forwards.with_label_values(&["Schedule"]).inc();
                let answer = self
                    .client(node)?
                    .schedule(self.forwarded(message, hops))
                    .await;
                self.stages()
                    .observe(ScheduleStage::Forward, received.elapsed());
                forwarded(node, answer)
            }
            Target::Remote(node) => {
                let router = Arc::clone(&self.router);
                let answer = self
                    .forwards
                    .submit(node, message, move |requests| {
                        let router = Arc::clone(&router);
                        async move { forward_schedules(&router, node, requests).await }
                    })
                    .await
                    .unwrap_or_else(|| {
                        Err(Error::Internal(
                            "the call forwarding this schedule was lost".into(),
                        ))
                    });
                self.stages()
                    .observe(ScheduleStage::Forward, received.elapsed());
                answer.map(Response::new)
            }
            Target::Local(_) => {
                let Command::Schedule {
                    key,
                    definition,
                    received_at_ms,
                } = command
                else {
                    return Err(Error::Internal(format!("not a schedule: {command:?}")));
                };
                let mut laps = self.stages().laps_from(received);
                laps.mark(ScheduleStage::Propose);
                let router = Arc::clone(&self.router);
                let outcome = self
                    .schedules
                    .submit(
                        partition,
                        (key, definition, received_at_ms),
                        move |proposals| {
                            let router = Arc::clone(&router);
                            async move { commit_schedules(&router, partition, proposals).await }
                        },
                    )
                    .await
                    .unwrap_or_else(|| {
                        Err(Error::Internal(
                            "the Raft entry carrying this schedule was lost".into(),
                        ))
                    })?;
                laps.mark(ScheduleStage::Commit);
                let response = self.schedule_outcome(outcome, partition).map(Response::new);
                laps.mark(ScheduleStage::Respond);
                response
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn do_cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Error> {
        self.authorize(
            &request,
            "Cancel",
            vec![request.get_ref().workflow_id.as_str()],
        )?;
        let hops = hops(&request);
        let message = request.into_inner();
        let key = convert::timer_key(message.workflow_id.clone(), message.timer_id.clone())
            .map_err(Error::from)?;
        let partition = self.partition(&key.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => {
                let answer = self
                    .client(node)?
                    .cancel(self.forwarded(message, hops))
                    .await;
                forwarded(node, answer)
            }
            Target::Local(group) => {
                let received_at_ms = self.router.host.cluster_now()?;
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
                        )))
                    }
                    other => {
                        return Err(Error::Internal(format!(
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
    ) -> Result<Response<v1::GetResponse>, Error> {
        self.authorize(
            &request,
            "Get",
            vec![request.get_ref().workflow_id.as_str()],
        )?;
        let hops = hops(&request);
        let message = request.into_inner();
        let key = convert::timer_key(message.workflow_id.clone(), message.timer_id.clone())
            .map_err(Error::from)?;
        let partition = self.partition(&key.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => {
                let answer = self.client(node)?.get(self.forwarded(message, hops)).await;
                forwarded(node, answer)
            }
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
    ) -> Result<Response<v1::ListResponse>, Error> {
        self.authorize(
            &request,
            "List",
            vec![request.get_ref().workflow_id.as_str()],
        )?;
        let hops = hops(&request);
        let message = request.into_inner();
        // Validates the workflow id with a placeholder timer id.
        convert::timer_key(message.workflow_id.clone(), "-".into()).map_err(Error::from)?;
        if message.page_size > MAX_PAGE_SIZE {
            return Err(Error::from(hourglass_types::Error::invalid(
                "page_size",
                format!("is {}, at most {MAX_PAGE_SIZE} allowed", message.page_size),
            )));
        }
        let after = convert::decode_page_token(&message.page_token).map_err(Error::from)?;
        let partition = self.partition(&message.workflow_id);
        match self.router.target(partition, hops)? {
            Target::Remote(node) => {
                let answer = self.client(node)?.list(self.forwarded(message, hops)).await;
                forwarded(node, answer)
            }
            Target::Local(group) => {
                self.router.read_barrier(partition, group).await?;
                let size = if message.page_size == 0 {
                    DEFAULT_PAGE_SIZE
                } else {
                    message.page_size
                } as usize;
                let mut page = Page::new(size, MAX_LIST_PAGE_BYTES);
                self.router
                    .host
                    .store
                    .list_timers(partition, &message.workflow_id, after.as_deref(), |r| {
                        page.offer(convert::timer(r, partition))
                    })
                    .map_err(Error::from)?;
                Ok(Response::new(page.into_response()))
            }
        }
    }
}

/// A List page being filled: it takes timers until it holds `max_timers`, or until the next
/// one would take the timers' encoded size past `max_bytes`; it always takes the first, so a
/// page makes progress whatever the payload size (a lone timer is at most about 1 MiB).
struct Page {
    timers: Vec<v1::Timer>,
    bytes: usize,
    max_timers: usize,
    max_bytes: usize,
    /// A timer was refused: another page follows.
    more: bool,
}

impl Page {
    fn new(max_timers: usize, max_bytes: usize) -> Self {
        Page {
            timers: Vec::new(),
            bytes: 0,
            max_timers,
            max_bytes,
            more: false,
        }
    }

    /// Takes `timer` if it fits; false when the page is full (the caller stops reading).
    fn offer(&mut self, timer: v1::Timer) -> bool {
        // A repeated message field costs its tag (1 byte), its length and its bytes.
        let len = prost::Message::encoded_len(&timer);
        let size = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        let full = self.timers.len() >= self.max_timers
            || (!self.timers.is_empty() && self.bytes + size > self.max_bytes);
        if full {
            self.more = true;
            return false;
        }
        self.bytes += size;
        self.timers.push(timer);
        true
    }

    fn into_response(self) -> v1::ListResponse {
        let next_page_token = match (self.more, self.timers.last()) {
            (true, Some(last)) => convert::encode_page_token(&last.timer_id),
            _ => String::new(),
        };
        v1::ListResponse {
            timers: self.timers,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(id: usize, payload_bytes: usize) -> v1::Timer {
        v1::Timer {
            workflow_id: "w".into(),
            timer_id: format!("t{id:04}"),
            payload: vec![7; payload_bytes],
            ..Default::default()
        }
    }

    /// Fills pages from `timers` as List does, page after page; returns them.
    fn paginate(
        timers: &[v1::Timer],
        max_timers: usize,
        max_bytes: usize,
    ) -> Vec<v1::ListResponse> {
        let mut out = Vec::new();
        let mut next = 0;
        loop {
            let mut page = Page::new(max_timers, max_bytes);
            for t in &timers[next..] {
                if !page.offer(t.clone()) {
                    break;
                }
            }
            let response = page.into_response();
            next += response.timers.len();
            let last = response.next_page_token.is_empty();
            out.push(response);
            if last {
                return out;
            }
        }
    }

    #[test]
    fn forwarded_schedules_split_into_calls_within_a_batchs_limits() {
        assert_eq!(split_calls(&[], 3, 10), Vec::<usize>::new());
        assert_eq!(split_calls(&[1; 7], 3, 100), vec![3, 3, 1]);
        assert_eq!(split_calls(&[4, 4, 4, 4], 10, 8), vec![2, 2], "8 bytes fit");
        assert_eq!(split_calls(&[4, 5, 4], 10, 8), vec![1, 1, 1]);
        assert_eq!(
            split_calls(&[20, 1, 1, 20], 10, 8),
            vec![1, 2, 1],
            "a larger item goes alone"
        );
        let sizes = [3usize, 0, 7, 7, 1, 2, 9, 0, 0, 5];
        let calls = split_calls(&sizes, 3, 9);
        assert_eq!(calls.iter().sum::<usize>(), sizes.len(), "every item once");
        let mut at = 0;
        for n in calls {
            let call = &sizes[at..at + n];
            assert!((1..=3).contains(&n));
            assert!(n == 1 || call.iter().sum::<usize>() <= 9, "{call:?}");
            at += n;
        }
    }

    #[test]
    fn list_pages_stay_under_the_byte_bound_and_lose_no_timer() {
        let timers: Vec<_> = (0..1000).map(|i| timer(i, 60 * 1024)).collect();
        let pages = paginate(&timers, 1000, MAX_LIST_PAGE_BYTES);
        for p in &pages {
            let encoded = prost::Message::encoded_len(p);
            assert!(
                encoded < MAX_LIST_PAGE_BYTES + 1024,
                "page of {encoded} bytes"
            );
        }
        // 3 MiB holds 51 such timers: the bound, not the page size, cuts the pages.
        assert_eq!(pages[0].timers.len(), 51);
        let all: Vec<_> = pages.iter().flat_map(|p| p.timers.clone()).collect();
        assert_eq!(all, timers);
        assert_eq!(
            pages[0].next_page_token,
            convert::encode_page_token("t0050")
        );
    }

    #[test]
    fn a_page_takes_at_least_one_timer_and_ends_on_the_page_size() {
        // A timer larger than the bound still makes a page of its own.
        let big = [timer(0, 2048), timer(1, 10)];
        let pages = paginate(&big, 100, 1024);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].timers.len(), 1);
        assert_eq!(pages[1].timers.len(), 1);
        assert!(pages[1].next_page_token.is_empty());
        // Small timers end pages on the count, and the last full page says nothing follows
        // only when nothing does.
        let small: Vec<_> = (0..10).map(|i| timer(i, 1)).collect();
        let pages = paginate(&small, 5, MAX_LIST_PAGE_BYTES);
        assert_eq!(pages.len(), 2);
        assert_eq!(
            pages[0].next_page_token,
            convert::encode_page_token("t0004")
        );
        assert!(pages[1].next_page_token.is_empty());
    }
}
