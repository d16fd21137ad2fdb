//! Rust client for Hourglass.
//!
//! [`Client`] talks to any node of a cluster; nodes forward calls to partition leaders. While a
//! partition has no leader the cluster answers UNAVAILABLE: the client then retries, preferring
//! the leader named in the answer, other endpoints otherwise, until its retry budget runs out.
//! Schedule and cancel are idempotent (G6), so retrying an uncertain write is safe.
//!
//! A client made [`Client::routed`] sends each call about one workflow straight to its
//! partition's leader, as the cluster last reported it, saving the forwarding hop.
//!
//! What an answer says beyond its code is read from its standard `google.rpc` error details
//! (see [`Error::details`]): the leader from `ErrorInfo` (`leader_address`), how long to wait
//! from `RetryInfo`, the invalid field from `BadRequest`. Waits between retries grow
//! exponentially with random jitter.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod routes;
mod worker;

use backon::{BackoffBuilder, ExponentialBuilder};
pub use hourglass_proto::v1;
use hourglass_proto::v1::admin_client::AdminClient;
use hourglass_proto::v1::timers_client::TimersClient;
use hourglass_proto::ERROR_DOMAIN;
use prost::Message;
use routes::{Routes, Table};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
pub use tonic_types::ErrorDetails;
use tonic_types::StatusExt;
pub use worker::{Delivery, Worker, WorkerOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid endpoint {0:?}: expected HOST:PORT")]
    InvalidEndpoint(String),
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("tls: {0}")]
    Tls(String),
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

    /// The `google.rpc` error details of the cluster's answer (empty for other errors).
    pub fn details(&self) -> ErrorDetails {
        match self {
            Error::Status(s) => s.get_error_details(),
            _ => ErrorDetails::new(),
        }
    }

    /// The request field an INVALID_ARGUMENT answer names (`BadRequest`).
    pub fn field(&self) -> Option<String> {
        self.details()
            .bad_request()
            .and_then(|b| b.field_violations.first())
            .map(|v| v.field.clone())
    }

    /// Why the node refused (`ErrorInfo.reason`, e.g. `NOT_LEADER`).
    pub fn reason(&self) -> Option<String> {
        hints(&self.details()).reason
    }
}

/// What an answer's details say about retrying it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Hints {
    /// `ErrorInfo.reason` of an answer made by a node (domain [`ERROR_DOMAIN`]).
    reason: Option<String>,
    /// `HOST:PORT` of the partition's leader.
    leader: Option<String>,
    /// How long the node asked to wait.
    retry_delay: Option<Duration>,
}

fn hints(details: &ErrorDetails) -> Hints {
    let info = details.error_info().filter(|i| i.domain == ERROR_DOMAIN);
    Hints {
        reason: info.map(|i| i.reason.clone()),
        leader: info
            .and_then(|i| i.metadata.get("leader_address"))
            .filter(|a| !a.is_empty())
            .cloned(),
        retry_delay: details.retry_info().and_then(|r| r.retry_delay),
    }
}

/// Whether an answer is worth sending again (every call of the API is idempotent). A node's
/// answer is retried when its code means "not now" (UNAVAILABLE, DEADLINE_EXCEEDED) or it
/// asks to be retried (RetryInfo). An answer no node made (no ErrorInfo of ours: the
/// connection broke, the stream was reset) is retried when its code says the call may not
/// have been handled: UNKNOWN and INTERNAL too.
fn retryable(code: Code, hints: &Hints) -> bool {
    match code {
        Code::Unavailable | Code::DeadlineExceeded => true,
        _ if hints.retry_delay.is_some() => true,
        Code::Unknown | Code::Internal => hints.reason.is_none(),
        _ => false,
    }
}

/// Waits between retries: exponential from 25 ms to 500 ms, each stretched by a random part of
/// itself (so up to 1 s), so clients that failed together do not retry in lockstep.
fn retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(25))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A batch item's failure as the status a single call would have answered, details included.
fn batch_status(e: v1::BatchError) -> Status {
    let code = Code::from(e.code);
    let details = tonic_types::Status {
        code: e.code,
        message: e.message.clone(),
        details: e.details,
    };
    Status::with_details(code, e.message, details.encode_to_vec().into())
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

/// TLS to the nodes' client ports: the cluster CA to verify them by, and optionally a client
/// certificate (`hourglass cert client`) or a bearer token (`hourglass token new`) to
/// authenticate with. A token goes only with TLS: in the clear anyone on the path could
/// reuse it.
#[derive(Debug, Clone)]
pub struct Tls {
    config: ClientTlsConfig,
    bearer: Bearer,
}

impl Tls {
    /// Trusts the nodes whose certificates `ca_pem` signed, for the name or address each
    /// endpoint is given by.
    pub fn new(ca_pem: impl AsRef<[u8]>) -> Self {
        Tls {
            config: ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)),
            bearer: Bearer::default(),
        }
    }

    /// Presents this certificate and key (PEM) to the nodes.
    pub fn with_identity(self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        Tls {
            config: self.config.identity(Identity::from_pem(cert_pem, key_pem)),
            ..self
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn with_token(self, token: &str) -> Result<Self> {
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| Error::Tls("the token is not printable ASCII".into()))?;
        // Kept out of debug output.
        value.set_sensitive(true);
        Ok(Tls {
            bearer: Bearer(Some(value)),
            ..self
        })
    }

    /// Reads the CA and, when both are given, the client certificate and key from PEM files.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
        };
        let tls = Tls::new(read(ca)?);
        Ok(match identity {
            Some((cert, key)) => tls.with_identity(read(cert)?, read(key)?),
            None => tls,
        })
    }
}

/// Adds the bearer token, if any, to each call.
#[derive(Debug, Clone, Default)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to one node, with the client's credentials.
pub(crate) type Transport = InterceptedService<Channel, Bearer>;

pub struct Client {
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Transport>>,
    next: AtomicUsize,
    retry: RetryPolicy,
    tls: Option<Tls>,
    /// Each partition's leader, when the client routes calls itself.
    routes: Option<Routes>,
}

/// A lazily connected channel to `address` (`HOST:PORT`), over TLS when `tls` is given.
pub(crate) fn channel_for(address: &str, tls: Option<&Tls>) -> Result<Transport> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else if tls.is_some() {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|_| Error::InvalidEndpoint(address.to_owned()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config.clone())
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    let bearer = tls.map(|t| t.bearer.clone()).unwrap_or_default();
    Ok(InterceptedService::new(endpoint.connect_lazy(), bearer))
}

impl Client {
    /// A client of the cluster reachable at any of `endpoints` (`HOST:PORT`). Connections are
    /// made on first use.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self> {
        Self::with_retry(endpoints, RetryPolicy::default())
    }

    pub fn with_retry<S: AsRef<str>>(endpoints: &[S], retry: RetryPolicy) -> Result<Self> {
        Self::with_options(endpoints, retry, None)
    }

    /// A client with a retry policy and, for a cluster with TLS, its CA and certificate.
    pub fn with_options<S: AsRef<str>>(
        endpoints: &[S],
        retry: RetryPolicy,
        tls: Option<Tls>,
    ) -> Result<Self> {
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
            channels.insert(e.clone(), channel_for(e, tls.as_ref())?);
        }
        Ok(Client {
            endpoints,
            channels: Mutex::new(channels),
            next: AtomicUsize::new(0),
            retry,
            tls,
            routes: None,
        })
    }

    /// This client sends Schedule, Cancel, Get and List straight to the leader of the
    /// workflow's partition, as `Admin.ClusterStatus` last reported it (asked on first use and
    /// every 30 s after, by one call at a time with one attempt), instead of to the next
    /// endpoint, which forwards the call when it does not lead the partition. Where no
    /// leader is known, or a call to it fails, the client goes on as without routing.
    /// `ScheduleBatch` is not routed: one batch spans partitions.
    pub fn routed(mut self) -> Self {
        self.routes = Some(Routes::default());
        self
    }

    /// Where a call about `workflow_id` goes first: its partition's leader, when routed and
    /// known.
    async fn route(&self, workflow_id: &str) -> Option<String> {
        let routes = self.routes.as_ref()?;
        if let Some(refresh) = routes.refresh_due(Instant::now()) {
            let target = self.next_endpoint();
            let asked = async {
                let mut admin = AdminClient::new(self.channel(&target).ok()?);
                let status = admin.cluster_status(v1::ClusterStatusRequest {});
                let status = tokio::time::timeout(self.retry.attempt_timeout, status).await;
                Table::from_status(&status.ok()?.ok()?.into_inner())
            };
            let table = asked.await;
            tracing::debug!(%target, known = table.is_some(), "partition leaders asked");
            refresh.finish(table, Instant::now());
        }
        let leader = routes.leader_of(workflow_id)?;
        // An address the cluster reports but this client cannot even parse is not used.
        if self.channel(&leader).is_err() {
            routes.forget(&leader);
            return None;
        }
        Some(leader)
    }

    fn next_endpoint(&self) -> String {
        self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()].clone()
    }

    fn channel(&self, address: &str) -> Result<Transport> {
        let mut channels = self.channels.lock().expect("channel map poisoned");
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = channel_for(address, self.tls.as_ref())?;
        channels.insert(address.to_owned(), c.clone());
        Ok(c)
    }

    /// Runs `call` against an endpoint, retrying on answers that mean "not now".
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_to(None, call).await
    }

    /// Runs `call` against `first` if given, else an endpoint, retrying on answers that mean
    /// "not now".
    async fn call_to<T, F, Fut>(&self, first: Option<String>, mut call: F) -> Result<T>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry.budget;
        let mut target = first.clone().unwrap_or_else(|| self.next_endpoint());
        let mut backoff = retry_backoff();
        let mut following = retry_backoff();
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
            let hints = hints(&status.get_error_details());
            if !retryable(status.code(), &hints) {
                return Err(status.into());
            }
            // A node's own "not now" (a clock not yet known, a commit timeout) is asked again
            // of the same leader; an answer no node made (the connection failed) forgets it.
            let again = match (&self.routes, hints.reason.is_some()) {
                (Some(_), true) if first.as_deref() == Some(target.as_str()) => {
                    Some(target.clone())
                }
                (Some(routes), false) => {
                    routes.forget(&target);
                    None
                }
                _ => None,
            };
            // A named leader is tried at once (after a short jittered pause), backing off only
            // if hints keep coming; otherwise the next endpoint, no sooner than the node asked.
            let follow = hints.leader.filter(|leader| *leader != target);
            let wait = match &follow {
                Some(_) => following.next(),
                None => backoff
                    .next()
                    .map(|w| w.max(hints.retry_delay.unwrap_or_default())),
            }
            .unwrap_or(Duration::from_secs(1));
            if tokio::time::Instant::now() + wait > deadline {
                return Err(status.into());
            }
            tracing::debug!(%target, code = ?status.code(), message = status.message(), leader = ?follow, ?wait, "retrying");
            target = follow.or(again).unwrap_or_else(|| self.next_endpoint());
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn schedule(&self, request: v1::ScheduleRequest) -> Result<v1::ScheduleResponse> {
        let first = self.route(&request.workflow_id).await;
        self.call_to(first, |c| {
            let r = request.clone();
            async move { TimersClient::new(c).schedule(r).await }
        })
        .await
    }

    /// Schedules many timers in one call (at most 1000), returning each one's outcome in
    /// order. Timers whose partition answered "not now" (UNAVAILABLE, DEADLINE_EXCEEDED) are
    /// sent again until the retry budget runs out; the others are final, each with the details
    /// a single Schedule would have answered.
    pub async fn schedule_batch(
        &self,
        timers: Vec<v1::ScheduleRequest>,
    ) -> Result<Vec<Result<v1::ScheduleResponse>>> {
        let deadline = tokio::time::Instant::now() + self.retry.budget;
        let mut outcomes: Vec<Option<Result<v1::ScheduleResponse>>> =
            timers.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..timers.len()).collect();
        let mut backoff = retry_backoff();
        while !todo.is_empty() {
            let wait = backoff.next().unwrap_or(Duration::from_secs(1));
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
                        let status = batch_status(e);
                        if retryable(status.code(), &hints(&status.get_error_details()))
                            && tokio::time::Instant::now() + wait < deadline
                        {
                            again.push(i);
                        }
                        Err(status.into())
                    }
                    None => Err(Status::internal(
                        "server answered a batch item without an outcome",
                    )
                    .into()),
                });
            }
            if !again.is_empty() {
                tokio::time::sleep(wait).await;
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
        let first = self.route(workflow_id).await;
        self.call_to(first, |c| {
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
        let first = self.route(workflow_id).await;
        let response = self
            .call_to(first, |c| {
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
        let first = self.route(workflow_id).await;
        self.call_to(first, |c| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node_answer(code: Code, details: ErrorDetails) -> Status {
        Status::with_error_details(code, "m", details)
    }

    #[test]
    fn hints_come_from_the_google_rpc_details() {
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_millis(200)));
        details.set_error_info(
            "NOT_LEADER",
            ERROR_DOMAIN,
            [
                ("leader_id".to_string(), "2".to_string()),
                ("leader_address".to_string(), "10.0.0.2:7002".to_string()),
            ],
        );
        let status = node_answer(Code::Unavailable, details);
        let h = hints(&status.get_error_details());
        assert_eq!(h.leader.as_deref(), Some("10.0.0.2:7002"));
        assert_eq!(h.retry_delay, Some(Duration::from_millis(200)));
        assert_eq!(h.reason.as_deref(), Some("NOT_LEADER"));
        assert!(retryable(status.code(), &h));

        // Another domain's ErrorInfo is not ours to follow.
        let mut details = ErrorDetails::new();
        details.set_error_info(
            "NOT_LEADER",
            "example.com",
            [("leader_address".to_string(), "evil:1".to_string())],
        );
        assert_eq!(hints(&details), Hints::default());

        // Metadata is not read any more.
        let mut status = Status::unavailable("m");
        status
            .metadata_mut()
            .insert("x-hourglass-leader", "2=10.0.0.2:7002".parse().unwrap());
        assert_eq!(hints(&status.get_error_details()).leader, None);
    }

    #[test]
    fn retryability_follows_code_and_details_not_message_text() {
        let mine = |reason: &str| {
            let mut d = ErrorDetails::new();
            d.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
            hints(&d)
        };
        let none = Hints::default();
        assert!(retryable(Code::Unavailable, &none));
        assert!(retryable(Code::DeadlineExceeded, &mine("COMMIT_TIMEOUT")));
        // The connection broke: no node answered.
        assert!(retryable(Code::Unknown, &none));
        assert!(retryable(Code::Internal, &none));
        // A node's own INTERNAL or INVALID_ARGUMENT is final, whatever its message says.
        assert!(!retryable(Code::Internal, &mine("STORAGE")));
        assert!(!retryable(Code::InvalidArgument, &mine("INVALID_FIELD")));
        assert!(!retryable(Code::NotFound, &mine("TIMER_NOT_FOUND")));
        assert!(!retryable(Code::ResourceExhausted, &none));
        // Anything a node asks to be retried is.
        let mut d = ErrorDetails::new();
        d.set_retry_info(Some(Duration::from_millis(5)));
        assert!(retryable(Code::ResourceExhausted, &hints(&d)));
    }

    #[test]
    fn batch_items_keep_their_details() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("queue", "bad");
        let single = node_answer(Code::InvalidArgument, details);
        let item = v1::BatchError {
            code: Code::InvalidArgument as i32,
            message: "invalid queue: bad".into(),
            details: tonic_types::Status::decode(single.details())
                .unwrap()
                .details,
        };
        let e = Error::from(batch_status(item));
        assert_eq!(e.code(), Some(Code::InvalidArgument));
        assert_eq!(e.field().as_deref(), Some("queue"));
    }

    #[test]
    fn backoff_grows_with_jitter() {
        let waits: Vec<Duration> = retry_backoff().take(12).collect();
        assert_eq!(waits.len(), 12);
        assert!(waits[0] >= Duration::from_millis(25) && waits[0] < Duration::from_millis(50));
        assert!(waits.iter().all(|w| *w < Duration::from_secs(1)));
        assert!(waits[8..].iter().all(|w| *w >= Duration::from_millis(500)));
        assert_ne!(waits, retry_backoff().take(12).collect::<Vec<_>>());
    }
}
