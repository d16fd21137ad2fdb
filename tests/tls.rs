//! A cluster with TLS on real processes: it works end to end over TLS, plaintext clients are
//! refused, and the Raft transport admits only member nodes of the cluster's CA.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hourglass_client::{Worker, WorkerOptions};
use hourglass_tests::secure::peer_hello;
use hourglass_tests::{cert, schedule_in, Cluster, Options};
use tonic::Code;

fn tls_cluster() -> Options {
    Options {
        tls: true,
        ..Options::default()
    }
}

/// What a Hello on node 1's peer port answers to a caller presenting `identity`.
async fn hello_as(
    cluster: &Cluster,
    ca: &std::path::Path,
    identity: (&std::path::Path, &std::path::Path),
) -> Result<(), Code> {
    peer_hello(
        &cluster.node(1).peer_addr,
        1,
        cluster.partitions,
        ca,
        identity,
    )
    .await
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

/// CA rotation: nodes whose CA file holds the old CA and the new one accept node and client
/// certificates of either, on the peer port and the client port, and still refuse any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_trusting_two_cas_accept_certificates_of_both() -> Result<()> {
    let mut cluster = Cluster::prepare(tls_cluster())?;
    let certs = cluster.certs.clone().context("TLS cluster")?;
    let ca = certs.join("ca.crt");
    let new_ca = certs.join("new");
    let new_dir = new_ca.to_str().context("UTF-8 path")?;
    cert(&["init", "--dir", new_dir])?;
    cert(&["node", "3", "--dir", new_dir])?;
    cert(&["client", "bob", "--dir", new_dir, "--role", "admin"])?;
    // Every node's (and the test clients') CA file holds both CAs; node 3 runs with a
    // certificate of the new one, nodes 1 and 2 with the old one's.
    let bundle = [std::fs::read(&ca)?, std::fs::read(new_ca.join("ca.crt"))?].concat();
    std::fs::write(&ca, bundle)?;
    for ext in ["crt", "key"] {
        std::fs::rename(
            new_ca.join(format!("node-3.{ext}")),
            certs.join(format!("node-3.{ext}")),
        )?;
    }
    for id in 1..=3 {
        cluster.spawn(id)?;
    }
    cluster.wait_all_led(Duration::from_secs(60)).await?;

    // Peer port: node 1 admits node 3's new certificate, node 3 node 2's old one.
    let node3 = (certs.join("node-3.crt"), certs.join("node-3.key"));
    assert_eq!(hello_as(&cluster, &ca, (&node3.0, &node3.1)).await, Ok(()));
    let node2 = (certs.join("node-2.crt"), certs.join("node-2.key"));
    assert_eq!(
        peer_hello(
            &cluster.node(3).peer_addr,
            3,
            cluster.partitions,
            &ca,
            (&node2.0, &node2.1)
        )
        .await,
        Ok(())
    );
    // Client port: the old admin certificate through node 3, which forwards to the leaders
    // with its new certificate; the new client certificate through node 1.
    let through_3 = cluster.client_of(&[3]);
    for i in 0..8 {
        through_3
            .schedule(schedule_in(
                &format!("w{i}"),
                "old",
                Duration::from_secs(60),
                "",
            ))
            .await
            .with_context(|| format!("the old admin certificate schedules w{i} via node 3"))?;
    }
    let bob = (new_ca.join("client-bob.crt"), new_ca.join("client-bob.key"));
    let new_client = hourglass_client::Client::with_options(
        &[cluster.node(1).addr.clone()],
        hourglass_client::RetryPolicy::default(),
        Some(hourglass_client::Tls::from_files(
            &ca,
            Some((&bob.0, &bob.1)),
        )?),
    )?;
    for i in 0..8 {
        new_client
            .get(&format!("w{i}"), "old")
            .await
            .with_context(|| format!("the new client certificate reads w{i} via node 1"))?;
    }

    // A third CA is in no node's file.
    let other = certs.join("other");
    let other_dir = other.to_str().context("UTF-8 path")?;
    cert(&["init", "--dir", other_dir])?;
    cert(&["node", "2", "--dir", other_dir])?;
    let forged = (other.join("node-2.crt"), other.join("node-2.key"));
    let refused = hello_as(&cluster, &ca, (&forged.0, &forged.1)).await;
    assert!(refused.is_err(), "{refused:?}");
    Ok(())
}
