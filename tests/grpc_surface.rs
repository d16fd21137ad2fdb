//! The standard gRPC surface of a node, checked on real 3-process clusters with stock gRPC
//! clients (tonic's health and reflection clients, raw protobuf): the same calls as the
//! `grpcurl` examples in docs/api.md. Health answers per public service, reflection describes
//! exactly the public API, and errors carry `google.rpc` details.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hourglass_client::v1;
use hourglass_client::v1::timers_client::TimersClient;
use hourglass_proto::internal::raft_transport_client::RaftTransportClient;
use hourglass_tests::{schedule_in, Cluster, Options};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

/// What `grpcurl -plaintext HOST:PORT list` must show (with v1alpha reflection, grpcurl
/// before 1.9 shows `grpc.reflection.v1alpha.ServerReflection` instead).
const PUBLIC_SERVICES: [&str; 5] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "hourglass.v1.Admin",
    "hourglass.v1.Timers",
    "hourglass.v1.Workers",
];
/// The names health answers for: the node and each public service.
const HEALTH_NAMES: [&str; 4] = [
    "",
    "hourglass.v1.Timers",
    "hourglass.v1.Workers",
    "hourglass.v1.Admin",
];

async fn channel(addr: &str) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

async fn health(addr: &str, service: &str) -> Result<ServingStatus, Status> {
    let channel = channel(addr)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown))
}

mod reflect {
    //! `grpcurl list` and `grpcurl describe`, through the reflection service.
    use super::*;
    use tokio_stream::StreamExt;

    pub mod v1 {
        pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        pub use tonic_reflection::pb::v1::ServerReflectionRequest;
    }
    pub mod v1alpha {
        pub use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        pub use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        pub use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        pub use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    }

    /// The services listed by reflection v1.
    pub async fn list(addr: &str) -> Result<BTreeSet<String>> {
        match ask(addr, v1::MessageRequest::ListServices(String::new())).await? {
            v1::MessageResponse::ListServicesResponse(l) => {
                Ok(l.service.into_iter().map(|s| s.name).collect())
            }
            other => bail!("unexpected reflection answer {other:?}"),
        }
    }

    /// The services listed by reflection v1alpha (what grpcurl before 1.9 asks).
    pub async fn list_v1alpha(addr: &str) -> Result<BTreeSet<String>> {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1alpha::MessageRequest::ListServices(String::new())),
        };
        let mut answers = v1alpha::ServerReflectionClient::new(channel(addr).await?)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        match answers.next().await.context("no answer")??.message_response {
            Some(v1alpha::MessageResponse::ListServicesResponse(l)) => {
                Ok(l.service.into_iter().map(|s| s.name).collect())
            }
            other => bail!("unexpected reflection answer {other:?}"),
        }
    }

    /// The file descriptors describing `symbol`, or the code of the reflection error (sent as
    /// an ErrorResponse or as the stream's status).
    pub async fn describe(
        addr: &str,
        symbol: &str,
    ) -> Result<Result<Vec<prost_types::FileDescriptorProto>, i32>> {
        let answer = match ask(
            addr,
            v1::MessageRequest::FileContainingSymbol(symbol.into()),
        )
        .await
        {
            Ok(answer) => answer,
            Err(e) => match e.downcast_ref::<Status>() {
                Some(status) => return Ok(Err(status.code() as i32)),
                None => return Err(e),
            },
        };
        match answer {
            v1::MessageResponse::FileDescriptorResponse(f) => Ok(Ok(f
                .file_descriptor_proto
                .iter()
                .map(|b| prost_types::FileDescriptorProto::decode(&b[..]))
                .collect::<Result<_, _>>()?)),
            v1::MessageResponse::ErrorResponse(e) => Ok(Err(e.error_code)),
            other => bail!("unexpected reflection answer {other:?}"),
        }
    }

    async fn ask(addr: &str, message: v1::MessageRequest) -> Result<v1::MessageResponse> {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        };
        let mut answers = v1::ServerReflectionClient::new(channel(addr).await?)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        answers
            .next()
            .await
            .context("no answer")??
            .message_response
            .context("empty answer")
    }
}

/// `hourglass.v1.ScheduleRequest` with `workflow_id` as raw bytes, to send what no generated
/// client can: a workflow id that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawScheduleRequest {
    #[prost(bytes = "vec", tag = "1")]
    workflow_id: Vec<u8>,
    #[prost(string, tag = "2")]
    timer_id: String,
    #[prost(message, optional, tag = "5")]
    delay: Option<prost_types::Duration>,
}

async fn schedule_raw(addr: &str, request: RawScheduleRequest) -> Result<Status> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await?);
    grpc.ready().await?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/hourglass.v1.Timers/Schedule");
    let answer: Result<tonic::Response<v1::ScheduleResponse>, Status> = grpc
        .unary(
            tonic::Request::new(request),
            path,
            tonic::codec::ProstCodec::default(),
        )
        .await;
    match answer {
        Ok(r) => bail!("a non-UTF-8 workflow id was accepted: {:?}", r.into_inner()),
        Err(status) => Ok(status),
    }
}

fn field_of(status: &Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_else(|| panic!("no BadRequest field in {status:?}"))
}

async fn schedule_err(addr: &str, request: v1::ScheduleRequest) -> Result<Status> {
    match TimersClient::new(channel(addr).await?)
        .schedule(request)
        .await
    {
        Ok(r) => bail!("accepted: {:?}", r.into_inner()),
        Err(status) => Ok(status),
    }
}

/// Reflection lists exactly the public services, describes them, and knows nothing of the
/// internal transport; health answers SERVING per service on every node; an invalid argument
/// names its field in a BadRequest; a follower that may not forward names the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_reflection_and_rich_errors() -> Result<()> {
    let cluster = Cluster::start(Options::default()).await?;
    let a = cluster.node(1).addr.clone();

    // grpcurl -plaintext 127.0.0.1:7001 list
    let expected: BTreeSet<String> = PUBLIC_SERVICES.iter().map(|s| s.to_string()).collect();
    assert_eq!(reflect::list(&a).await?, expected);
    let mut alpha = expected.clone();
    alpha.remove("grpc.reflection.v1.ServerReflection");
    alpha.insert("grpc.reflection.v1alpha.ServerReflection".into());
    assert_eq!(reflect::list_v1alpha(&a).await?, alpha);

    // The client port does not serve the Raft transport at all; the peer port serves it and
    // nothing else.
    let hello = || hourglass_proto::internal::HelloRequest {
        from_node: 1,
        partition_count: cluster.partitions,
    };
    let on_client_port = RaftTransportClient::new(channel(&a).await?)
        .hello(hello())
        .await
        .expect_err("the client port must not serve RaftTransport");
    assert_eq!(
        on_client_port.code(),
        Code::Unimplemented,
        "{on_client_port:?}"
    );
    let p = cluster.node(1).peer_addr.clone();
    RaftTransportClient::new(channel(&p).await?)
        .hello(hello())
        .await
        .context("the peer port serves RaftTransport")?;
    let health_on_peer_port = health(&p, "")
        .await
        .expect_err("no health on the peer port");
    assert_eq!(health_on_peer_port.code(), Code::Unimplemented);
    let timers_on_peer_port =
        schedule_err(&p, schedule_in("w", "t", Duration::from_secs(60), "")).await?;
    assert_eq!(timers_on_peer_port.code(), Code::Unimplemented);

    // grpcurl -plaintext 127.0.0.1:7001 describe hourglass.v1.Timers
    let files = reflect::describe(&a, "hourglass.v1.Timers")
        .await?
        .map_err(|code| anyhow::anyhow!("reflection error {code}"))?;
    let timers = files
        .iter()
        .find(|f| f.name() == "hourglass/v1/timers.proto")
        .context("timers.proto not described")?;
    let methods: Vec<&str> = timers.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["Schedule", "Cancel", "Get", "List", "ScheduleBatch"]
    );
    assert_eq!(
        timers.options.as_ref().map(|o| o.go_package()),
        Some("hourglass.dev/api/hourglass/v1;hourglassv1")
    );
    // The internal transport is not described: NOT_FOUND, as for any unknown symbol.
    // grpcurl -plaintext 127.0.0.1:7001 describe hourglass.internal.v1.RaftTransport
    for internal in [
        "hourglass.internal.v1.RaftTransport",
        "hourglass.internal.v1.RaftMessage",
    ] {
        assert_eq!(
            reflect::describe(&a, internal).await?,
            Err(Code::NotFound as i32),
            "{internal}"
        );
    }

    // grpcurl -plaintext -d '{"service":"hourglass.v1.Timers"}' 127.0.0.1:7001 grpc.health.v1.Health/Check
    for node in &cluster.nodes {
        for service in HEALTH_NAMES {
            assert_eq!(
                health(&node.addr, service).await?,
                ServingStatus::Serving,
                "node {} {service:?}",
                node.id
            );
        }
        let unknown = health(&node.addr, "hourglass.internal.v1.RaftTransport").await;
        assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    }

    // INVALID_ARGUMENT names the field: fire_at and delay of 2^62 s plus nanoseconds, whose
    // milliseconds do not fit in 64 bits, and a workflow id that is not UTF-8.
    let huge = (1i64 << 62, 999_999_999);
    let mut request = schedule_in("grpc-surface", "huge", Duration::from_secs(1), "");
    request.when = Some(v1::schedule_request::When::FireAt(prost_types::Timestamp {
        seconds: huge.0,
        nanos: huge.1,
    }));
    let status = schedule_err(&a, request.clone()).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), "fire_at");
    let info = status.get_details_error_info().context("ErrorInfo")?;
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("INVALID_FIELD", "hourglass.dev")
    );
    request.when = Some(v1::schedule_request::When::Delay(prost_types::Duration {
        seconds: huge.0,
        nanos: huge.1,
    }));
    let status = schedule_err(&a, request).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), "delay");

    // grpcurl -plaintext -d '{"workflow_id":"","timer_id":"wake","delay":"5s"}' 127.0.0.1:7001 hourglass.v1.Timers/Schedule
    let mut empty = schedule_in("", "wake", Duration::from_secs(5), "");
    empty.workflow_id.clear();
    let status = schedule_err(&a, empty).await?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(field_of(&status), "workflow_id");
    assert!(status.metadata().get("x-hourglass-leader").is_none());

    let status = schedule_raw(
        &a,
        RawScheduleRequest {
            workflow_id: vec![b'w', 0xff, 0xfe],
            timer_id: "t".into(),
            delay: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        },
    )
    .await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), "workflow_id");

    // UNAVAILABLE from a follower asked with the hops header exhausted names the leader:
    // With 127.0.0.1:7001 a follower of the timer's partition:
    // grpcurl -plaintext -H 'x-hourglass-hops: 2' -d '{"workflow_id":"order-42","timer_id":"wake"}' 127.0.0.1:7001 hourglass.v1.Timers/Get
    // grpcurl -plaintext -d '{"workflow_id":"order-42","timer_id":"wake","delay":"3600s"}' 127.0.0.1:7001 hourglass.v1.Timers/Schedule
    let client = cluster.client();
    let timer = client
        .schedule(schedule_in(
            "order-42",
            "wake",
            Duration::from_secs(3600),
            "",
        ))
        .await?
        .timer
        .context("scheduled timer")?;
    // On a loaded machine leadership can move between the lookup and the call: ask again
    // until the answer names the leader looked up.
    let mut attempts = 0;
    let (leader, follower, status) = loop {
        attempts += 1;
        let leader = cluster.leader_of(timer.partition).await?;
        let follower = cluster
            .nodes
            .iter()
            .find(|n| n.id != leader)
            .context("a follower")?;
        let mut get = tonic::Request::new(v1::GetRequest {
            workflow_id: "order-42".into(),
            timer_id: "wake".into(),
        });
        get.metadata_mut().insert("x-hourglass-hops", "2".parse()?);
        let status = TimersClient::new(channel(&follower.addr).await?)
            .get(get)
            .await
            .expect_err("a follower may not forward a request that used up its hops");
        let named = status
            .get_details_error_info()
            .and_then(|i| i.metadata.get("leader_id").cloned());
        if named == Some(leader.to_string()) || attempts == 5 {
            break (leader, follower.id, status);
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().context("ErrorInfo")?;
    assert_eq!(info.reason, "NOT_LEADER");
    assert_eq!(info.domain, "hourglass.dev");
    assert_eq!(info.metadata["leader_id"], leader.to_string());
    assert_eq!(info.metadata["leader_address"], cluster.node(leader).addr);
    assert_eq!(info.metadata["partition"], timer.partition.to_string());
    let retry = status.get_details_retry_info().context("RetryInfo")?;
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(200)));
    // The old custom metadata is gone.
    for key in ["x-hourglass-leader", "x-hourglass-retry-after-ms"] {
        assert!(status.metadata().get(key).is_none(), "{key}");
    }
    // The Rust client follows the hint from the details: given only the follower, it reads
    // the timer from the leader.
    let via_follower = cluster.client_of(&[follower]);
    assert_eq!(via_follower.get("order-42", "wake").await?.timer_id, "wake");

    // A batch item fails with the details a single Schedule would have answered.
    let mut bad = schedule_in("grpc-surface", "bad-queue", Duration::from_secs(60), "");
    bad.queue = "no spaces".into();
    let outcomes = client
        .schedule_batch(vec![
            bad,
            schedule_in("grpc-surface", "ok", Duration::from_secs(60), ""),
        ])
        .await?;
    let e = outcomes[0].as_ref().expect_err("invalid queue");
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    assert_eq!(e.field().as_deref(), Some("queue"));
    assert!(outcomes[1].is_ok());
    Ok(())
}

/// One tower layer counts every public call by method and code; the WAL figures are
/// counters; every metric the Grafana dashboard queries is in a real scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_of_a_real_node() -> Result<()> {
    let cluster = Cluster::start(Options::default()).await?;
    let client = cluster.client_of(&[1]);
    client
        .schedule(schedule_in("metrics", "t", Duration::from_secs(3600), ""))
        .await?;
    client.cluster_status().await?;
    let missing = client.get("metrics", "no-such-timer").await.unwrap_err();
    assert_eq!(missing.code(), Some(Code::NotFound));
    let info = missing
        .details()
        .error_info()
        .cloned()
        .context("ErrorInfo")?;
    assert_eq!(info.reason, "TIMER_NOT_FOUND");

    let (code, text) = cluster.http_get(1, "/metrics")?;
    assert_eq!(code, 200);
    let count = |method: &str, code: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("hourglass_grpc_requests_total{")
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("code=\"{code}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("Schedule", "Ok") >= 1, "{text}");
    assert!(count("Get", "NotFound") >= 1, "{text}");
    // Admin calls count too; health and reflection do not.
    assert!(count("ClusterStatus", "Ok") >= 1, "{text}");
    assert!(!text.contains("method=\"Check\""), "{text}");

    for name in ["hourglass_wal_fsyncs_total", "hourglass_wal_appends_total"] {
        assert!(
            text.contains(&format!("# TYPE {name} counter")),
            "{name}: {text}"
        );
        let value: f64 = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .with_context(|| format!("{name} missing"))?;
        assert!(value > 0.0, "{name} = {value}");
    }

    // The tables on disk, by column family: each has its line.
    for cf in ["raft_log", "timers", "due", "fired", "tombstones"] {
        let label = format!("column_family=\"{cf}\"");
        assert!(
            text.lines()
                .any(|l| l.starts_with("hourglass_store_table_bytes{") && l.contains(&label)),
            "{label}: {text}"
        );
    }

    // Every metric of the dashboard is exported by a running node.
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/hourglass.json"),
    )?)?;
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("hourglass_"))
            {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "{name} (dashboard) is not exported"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10);
    Ok(())
}

/// NOT_SERVING while a node starts (it waits for its peers) and while it shuts down; SERVING
/// in between. A Health.Watch stream open at shutdown sees NOT_SERVING and does not hold the
/// node up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_follows_start_and_shutdown() -> Result<()> {
    let mut cluster = Cluster::prepare(Options::default())?;
    cluster.spawn(1)?;
    let a = cluster.node(1).addr.clone();
    // Node 1 alone: it serves gRPC but waits for its peers before starting its groups.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match health(&a, "").await {
            Ok(status) => {
                assert_eq!(status, ServingStatus::NotServing);
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("node 1 never answered health: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for service in HEALTH_NAMES {
        assert_eq!(
            health(&a, service).await?,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // Alone, the node knows no cluster time; bad input is still refused as such, and only a
    // valid request waits for the cluster.
    let mut bad = schedule_in("grpc-surface", "huge", Duration::from_secs(1), "");
    bad.when = Some(v1::schedule_request::When::FireAt(prost_types::Timestamp {
        seconds: 1i64 << 62,
        nanos: 999_999_999,
    }));
    let status = schedule_err(&a, bad).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), "fire_at");
    let good = schedule_in("grpc-surface", "fine", Duration::from_secs(1), "");
    let status = schedule_err(&a, good).await?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    cluster.spawn(2)?;
    cluster.spawn(3)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while health(&a, "").await.ok() != Some(ServingStatus::Serving) {
        if tokio::time::Instant::now() > deadline {
            bail!("node 1 never became SERVING");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for service in HEALTH_NAMES {
        assert_eq!(
            health(&a, service).await?,
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    // grpcurl -plaintext -d '{"service":""}' 127.0.0.1:7001 grpc.health.v1.Health/Watch
    let mut watch = HealthClient::new(channel(&a).await?)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = watch.message().await?.context("first watch answer")?;
    assert_eq!(first.status, ServingStatus::Serving as i32);
    cluster.terminate(1)?;
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status);
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the watch stream outlived the node's shutdown: {seen:?}"
    );
    // (tonic-health may repeat the status the stream opened with before the change.)
    assert_eq!(
        seen.last(),
        Some(&(ServingStatus::NotServing as i32)),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| [
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32
        ]
        .contains(s)),
        "{seen:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = cluster.try_exit(1) {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node 1 did not exit after SIGTERM:\n{}", cluster.stderr(1));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit:?}\n{}", cluster.stderr(1));
    Ok(())
}

/// Every grpcurl call docs/api.md shows is one the tests above make (each is quoted in a
/// comment next to the call), so the documentation cannot drift from what is checked.
#[test]
fn the_documented_grpcurl_calls_are_the_tested_ones() {
    let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md"),
    )
    .unwrap();
    let tested: Vec<String> = include_str!("grpc_surface.rs")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// grpcurl "))
        .map(|c| normalize(&format!("grpcurl {c}")))
        .collect();
    // Shell commands in the docs, with their continuation lines joined.
    let mut documented = Vec::new();
    let mut lines = docs.lines();
    while let Some(line) = lines.next() {
        let Some(command) = line.strip_prefix("$ grpcurl ") else {
            continue;
        };
        let mut command = format!("grpcurl {command}");
        while command.ends_with('\\') {
            command.pop();
            command.push_str(lines.next().unwrap_or_default());
        }
        documented.push(normalize(&command));
    }
    // Inline ones too: `grpcurl …`.
    for chunk in docs.split('`').skip(1).step_by(2) {
        if chunk.starts_with("grpcurl ") {
            documented.push(normalize(chunk));
        }
    }
    assert!(documented.len() >= 6, "{documented:#?}");
    for command in &documented {
        assert!(
            tested.contains(command),
            "docs/api.md shows `{command}`, which no test makes; tested: {tested:#?}"
        );
    }
}

/// Every .proto sets the language options stock generators need (docs/api.md), and buf's
/// configuration is where the docs say.
#[test]
fn every_proto_file_sets_go_and_java_options() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let package = text
            .lines()
            .find_map(|l| l.strip_prefix("package "))
            .and_then(|p| p.strip_suffix(';'))
            .unwrap();
        // hourglass.v1 -> hourglass/v1;hourglassv1, dev.hourglass.api.v1
        let path = package.replace('.', "/");
        let last_two: Vec<&str> = package.rsplit('.').take(2).collect();
        let go_name = format!("{}{}", last_two[1], last_two[0]);
        let java = package.replacen("hourglass", "dev.hourglass.api", 1);
        for option in [
            format!("option go_package = \"hourglass.dev/api/{path};{go_name}\";"),
            format!("option java_package = \"{java}\";"),
            "option java_multiple_files = true;".to_string(),
        ] {
            assert!(
                text.contains(&option),
                "{}: missing {option}",
                file.display()
            );
        }
    }
    let buf = std::fs::read_to_string(root.join("buf.yaml")).unwrap();
    assert!(buf.contains("lint:") && buf.contains("breaking:"), "{buf}");
}
