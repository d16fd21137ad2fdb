//! Rust client for Hourglass.
//!
//! [`Client`] talks to any node of a cluster; nodes forward calls to partition leaders. While a
//! partition has no leader the cluster answers UNAVAILABLE: the client then retries, preferring
//! the leader named in the answer, other endpoints otherwise, until its retry budget runs out.
//! Schedule and cancel are idempotent (G6), so retrying an uncertain write is safe.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

mod worker;

pub use hourglass_proto::v1;
use hourglass_proto::v1::admin_client::AdminClient;
use hourglass_proto::v1::timers_client::TimersClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
pub use worker::{Delivery, Worker, WorkerOptions};

/// Metadata key of the leader hint that nodes attach to UNAVAILABLE.
const LEADER_HINT: &str = "x-hourglass-leader";
const RETRY_AFTER_MS: &str = "x-hourglass-retry-after-ms";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {0:?}: expected HOST:PORT")]
    InvalidEndpoint(String),
    #[error("no endpoints given")]
    NoEndpoints,
    /// The cluster's answer; `status.code()` says which kind (see the API docs).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(Box::new(s))
    }
}

impl Error {
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Retry behaviour for UNAVAILABLE and DEADLINE_EXCEEDED answers.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total time spent retrying one call before its last error is returned.
    pub budget: Duration,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(12),
        }
    }
}

pub struct Client {
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    next: AtomicUsize,
    retry: RetryPolicy,
}

pub(crate) fn channel_for(address: &str) -> Result<Channel> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|_| Error::InvalidEndpoint(address.to_owned()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Client {
    /// A client of the cluster reachable at any of `endpoints` (`HOST:PORT`). Connections are
    /// made on first use.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self> {
        Self::with_retry(endpoints, RetryPolicy::default())
    }

    pub fn with_retry<S: AsRef<str>>(endpoints: &[S], retry: RetryPolicy) -> Result<Self> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.as_ref().trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut channels = HashMap::new();
        for e in &endpoints {
            channels.insert(e.clone(), channel_for(e)?);
        }
        Ok(Client {
            endpoints,
            channels: Mutex::new(channels),
            next: AtomicUsize::new(0),
            retry,
        })
    }

    fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().expect("channel map poisoned");
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = channel_for(address)?;
        channels.insert(address.to_owned(), c.clone());
        Ok(c)
    }

    /// Runs `call` against an endpoint, retrying on answers that mean "not now".
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry.budget;
        let mut target = self.endpoints
            [self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()]
        .clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt =
                tokio::time::timeout(self.retry.attempt_timeout, call(self.channel(&target)?))
                    .await;
            let status = match attempt {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer from {target} in {:?}",
                    self.retry.attempt_timeout
                )),
            };
            let retryable = matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            ) || (status.code() == Code::Internal
                && status.message().contains("transport"));
            if !retryable || tokio::time::Instant::now() + backoff > deadline {
                return Err(status.into());
            }
            let hint = status
                .metadata()
                .get(LEADER_HINT)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once('='))
                .map(|(_, addr)| addr.to_owned());
            let wait = status
                .metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(backoff);
            tracing::debug!(%target, code = ?status.code(), message = status.message(), "retrying");
            target = match hint {
                Some(leader) => leader,
                None => self.endpoints
                    [self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()]
                .clone(),
            };
            tokio::time::sleep(wait.min(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn schedule(&self, request: v1::ScheduleRequest) -> Result<v1::ScheduleResponse> {
        self.call(|c| {
            let r = request.clone();
            async move { TimersClient::new(c).schedule(r).await }
        })
        .await
    }

    /// Schedules many timers in one call (at most 1000), returning each one's outcome in
    /// order. Timers whose partition answered UNAVAILABLE or DEADLINE_EXCEEDED are sent again
    /// until the retry budget runs out; the others are final.
    pub async fn schedule_batch(
        &self,
        timers: Vec<v1::ScheduleRequest>,
    ) -> Result<Vec<Result<v1::ScheduleResponse>>> {
        let deadline = tokio::time::Instant::now() + self.retry.budget;
        let mut outcomes: Vec<Option<Result<v1::ScheduleResponse>>> =
            timers.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..timers.len()).collect();
        let mut backoff = Duration::from_millis(50);
        while !todo.is_empty() {
            let request = v1::ScheduleBatchRequest {
                timers: todo.iter().map(|&i| timers[i].clone()).collect(),
            };
            let response = self
                .call(|c| {
                    let r = request.clone();
                    async move { TimersClient::new(c).schedule_batch(r).await }
                })
                .await?;
            let mut again = Vec::new();
            for (&i, result) in todo.iter().zip(response.results) {
                outcomes[i] = Some(match result.result {
                    Some(v1::schedule_batch_result::Result::Scheduled(r)) => Ok(r),
                    Some(v1::schedule_batch_result::Result::Error(e)) => {
                        let code = Code::from(e.code);
                        if matches!(code, Code::Unavailable | Code::DeadlineExceeded)
                            && tokio::time::Instant::now() + backoff < deadline
                        {
                            again.push(i);
                        }
                        Err(Status::new(code, e.message).into())
                    }
                    None => Err(Status::internal(
                        "server answered a batch item without an outcome",
                    )
                    .into()),
                });
            }
            if !again.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            todo = again;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Status::internal("no outcome").into())))
            .collect())
    }

    pub async fn cancel(&self, workflow_id: &str, timer_id: &str) -> Result<v1::CancelResponse> {
        let request = v1::CancelRequest {
            workflow_id: workflow_id.to_owned(),
            timer_id: timer_id.to_owned(),
        };
        self.call(|c| {
            let r = request.clone();
            async move { TimersClient::new(c).cancel(r).await }
        })
        .await
    }

    pub async fn get(&self, workflow_id: &str, timer_id: &str) -> Result<v1::Timer> {
        let request = v1::GetRequest {
            workflow_id: workflow_id.to_owned(),
            timer_id: timer_id.to_owned(),
        };
        let response = self
            .call(|c| {
                let r = request.clone();
                async move { TimersClient::new(c).get(r).await }
            })
            .await?;
        response
            .timer
            .ok_or_else(|| Status::internal("server answered Get without a timer").into())
    }

    /// One page of a workflow's timers; pass the previous page's `next_page_token`.
    pub async fn list_page(
        &self,
        workflow_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<v1::ListResponse> {
        let request = v1::ListRequest {
            workflow_id: workflow_id.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        };
        self.call(|c| {
            let r = request.clone();
            async move { TimersClient::new(c).list(r).await }
        })
        .await
    }

    /// Every timer of a workflow, following pages.
    pub async fn list(&self, workflow_id: &str) -> Result<Vec<v1::Timer>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_page(workflow_id, 1000, &token).await?;
            out.extend(page.timers);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    pub async fn cluster_status(&self) -> Result<v1::ClusterStatusResponse> {
        self.call(|c| async move {
            AdminClient::new(c)
                .cluster_status(v1::ClusterStatusRequest {})
                .await
        })
        .await
    }
}
