//! A cluster with TLS on real processes: it works end to end over TLS, plaintext clients are
//! refused, and the Raft transport admits only member nodes of the cluster's CA.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hourglass_client::{Worker, WorkerOptions};
use hourglass_proto::internal::raft_transport_client::RaftTransportClient;
use hourglass_proto::internal::HelloRequest;
use hourglass_tests::{cert, schedule_in, Cluster, Options};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

fn tls_cluster() -> Options {
    Options {
        tls: true,
        ..Options::default()
    }
}

/// A channel to `addr` over TLS, trusting `ca` for node `node`'s name, presenting `identity`.
async fn tls_channel(
    addr: &str,
    ca: &std::path::Path,
    node: u64,
    identity: Option<(&std::path::Path, &std::path::Path)>,
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

/// What a Hello on node 1's peer port answers to a caller presenting `identity`, or the
/// connection error as UNAVAILABLE.
async fn hello_as(
    cluster: &Cluster,
    ca: &std::path::Path,
    identity: (&std::path::Path, &std::path::Path),
) -> Result<(), Code> {
    let channel = tls_channel(&cluster.node(1).peer_addr, ca, 1, Some(identity))
        .await
        .map_err(|_| Code::Unavailable)?;
    RaftTransportClient::new(channel)
        .hello(HelloRequest {
            from_node: 1,
            partition_count: cluster.partitions,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_schedules_and_delivers() -> Result<()> {
    let cluster = Cluster::start(tls_cluster()).await?;
    let client = std::sync::Arc::new(cluster.client());
    let mut worker = Worker::start(
        std::sync::Arc::clone(&client),
        WorkerOptions::new("default"),
    )
    .await
    .context("a worker over TLS")?;
    client
        .schedule(schedule_in(
            "w",
            "t",
            Duration::from_millis(500),
            "over tls",
        ))
        .await
        .context("schedule over TLS")?;
    let delivery = tokio::time::timeout(Duration::from_secs(20), worker.next())
        .await
        .context("no delivery over TLS")?
        .context("worker ended")?;
    assert_eq!(delivery.timer.timer_id, "t");
    assert!(delivery.ack());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_is_refused_and_the_transport_admits_only_member_nodes() -> Result<()> {
    let cluster = Cluster::start(tls_cluster()).await?;
    let certs = cluster.certs.clone().context("TLS cluster")?;
    let ca = certs.join("ca.crt");

    // A plaintext client cannot talk to the client port.
    let plain = hourglass_client::Client::with_options(
        &[cluster.node(1).addr.clone()],
        hourglass_client::RetryPolicy {
            budget: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(2),
        },
        None,
    )?;
    if plain.cluster_status().await.is_ok() {
        bail!("a plaintext client was answered by a TLS client port");
    }

    // A member node's certificate gets through.
    let node2 = (certs.join("node-2.crt"), certs.join("node-2.key"));
    assert_eq!(hello_as(&cluster, &ca, (&node2.0, &node2.1)).await, Ok(()));

    // Node 1's certificate from another CA: the handshake fails, nothing reaches Raft.
    let other = certs.join("other");
    let other_dir = other.to_str().context("UTF-8 path")?;
    cert(&["init", "--dir", other_dir])?;
    cert(&["node", "1", "--dir", other_dir])?;
    let forged = (other.join("node-1.crt"), other.join("node-1.key"));
    assert_eq!(
        hello_as(&cluster, &other.join("ca.crt"), (&forged.0, &forged.1)).await,
        Err(Code::Unavailable)
    );
    // Trusting the real CA for the server does not help: the server refuses the client.
    let refused = hello_as(&cluster, &ca, (&forged.0, &forged.1)).await;
    assert!(refused.is_err(), "{refused:?}");

    // The cluster's CA, but not a node: a client certificate, and a node id outside peers.
    let before = cluster.metric(1, "hourglass_peer_calls_refused_total")?;
    let dir = certs.to_str().context("UTF-8 path")?;
    cert(&["client", "mallory", "--dir", dir, "--role", "admin"])?;
    cert(&["node", "9", "--dir", dir])?;
    for name in ["client-mallory", "node-9"] {
        let (crt, key) = (
            certs.join(format!("{name}.crt")),
            certs.join(format!("{name}.key")),
        );
        assert_eq!(
            hello_as(&cluster, &ca, (&crt, &key)).await,
            Err(Code::PermissionDenied),
            "{name}"
        );
    }
    assert_eq!(
        cluster.metric(1, "hourglass_peer_calls_refused_total")?,
        before + 2.0
    );

    // The partitions are still led and serve.
    cluster.wait_all_led(Duration::from_secs(10)).await?;
    cluster
        .client()
        .schedule(schedule_in("w", "after", Duration::from_secs(60), ""))
        .await?;
    Ok(())
}
