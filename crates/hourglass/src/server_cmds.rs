//! `serve` and `dev`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hourglass_client::{Client, RetryPolicy, Tls};
use hourglass_server::auth::Role;
use hourglass_server::config::TlsConfig;
use hourglass_server::tls::node_name;
use hourglass_server::{Node, NodeConfig, Peer};
use tracing_subscriber::EnvFilter;

use crate::cli::{DevArgs, ServeArgs};
use crate::Failure;

fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The validated configuration.
fn effective_config(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let flags = args.overrides()?;
    let mut config = NodeConfig::load(args.config.as_deref(), &flags)?;
    config.rejoin = args.rejoin;
    Ok(config.validate()?)
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let config = effective_config(&args).map_err(|e| Failure { code: 1, error: e })?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_tracing();
    tracing::info!(
        node_id = config.node_id,
        glibc_tunables = crate::allocator::describe(),
        "allocator"
    );
    let node = tokio::select! {
        node = Node::start(config) => node?,
        _ = stop_signal() => return Ok(()),
    };
    stop_signal().await;
    tracing::info!(node_id = node.node_id(), "stopping");
    node.shutdown().await;
    Ok(())
}

pub async fn dev(args: DevArgs) -> Result<(), Failure> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err(crate::usage("--nodes must be between 1 and 9"));
    }
    if args.base_port == 0 || args.base_port > 60_000 {
        return Err(crate::usage("--base-port must be between 1 and 60000"));
    }
    let grpc = |i: u32| args.base_port + i as u16;
    let peer = |i: u32| args.base_port + 1000 + i as u16;
    let http = |i: u32| args.base_port + 2000 + i as u16;
    init_tracing();
    let (_temp, root): (Option<tempfile::TempDir>, PathBuf) = match args.data {
        Some(dir) => (None, dir),
        None => {
            let t = tempfile::Builder::new()
                .prefix("hourglass-dev-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let certs = root.join("certs");
    if args.tls {
        dev_certs(&certs, args.nodes)?;
    }
    let node_tls = |i: u32| {
        if !args.tls {
            return TlsConfig::default();
        }
        let name = node_name(u64::from(i));
        TlsConfig {
            ca: Some(certs.join("ca.crt")),
            cert: Some(certs.join(format!("{name}.crt"))),
            key: Some(certs.join(format!("{name}.key"))),
        }
    };
    let peers: Vec<Peer> = (1..=args.nodes)
        .map(|i| Peer {
            id: u64::from(i),
            address: format!("127.0.0.1:{}", grpc(i)),
            peer_address: format!("127.0.0.1:{}", peer(i)),
        })
        .collect();
    let configs: Vec<NodeConfig> = (1..=args.nodes)
        .map(|i| NodeConfig {
            node_id: u64::from(i),
            listen: format!("127.0.0.1:{}", grpc(i))
                .parse()
                .expect("valid address"),
            peer_listen: format!("127.0.0.1:{}", peer(i))
                .parse()
                .expect("valid address"),
            http_listen: Some(
                format!("127.0.0.1:{}", http(i))
                    .parse()
                    .expect("valid address"),
            ),
            data_dir: root.join(format!("node-{i}")),
            peers: peers.clone(),
            partitions: args.partitions,
            replication_factor: args.nodes.min(3) as usize,
            tls: node_tls(i),
            ..NodeConfig::default()
        })
        .collect();
    // Nodes wait for each other during start-up, so they start together.
    let started = futures::future::join_all(configs.into_iter().map(Node::start)).await;
    let mut nodes = Vec::new();
    let mut first_error = None;
    for r in started {
        match r {
            Ok(n) => nodes.push(n),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    if let Some(e) = first_error {
        for n in nodes {
            n.shutdown().await;
        }
        return Err(e.into());
    }
    let endpoints: Vec<String> = peers.iter().map(|p| p.address.clone()).collect();
    // The CLI's credentials on a TLS cluster: the admin certificate.
    let admin = args.tls.then(|| {
        (
            certs.join("ca.crt"),
            certs.join("client-admin.crt"),
            certs.join("client-admin.key"),
        )
    });
    let tls = match &admin {
        Some((ca, crt, key)) => Some(Tls::from_files(ca, Some((crt, key)))?),
        None => None,
    };
    wait_for_leaders(&endpoints, tls).await?;
    println!(
        "hourglass dev cluster is up: {} nodes, {} partitions",
        args.nodes, args.partitions
    );
    println!("data:      {}", root.display());
    for p in &peers {
        println!(
            "node {}:    grpc {}   http http://127.0.0.1:{}/readyz",
            p.id,
            p.address,
            http(p.id as u32)
        );
    }
    let mut hourglass = "hourglass".to_owned();
    if let Some((ca, crt, key)) = &admin {
        println!(
            "tls:       on; every call needs credentials (certificates in {})",
            certs.display()
        );
        println!(
            "connect:   export HOURGLASS_CA={} HOURGLASS_CERT={} HOURGLASS_KEY={}",
            ca.display(),
            crt.display(),
            key.display()
        );
        println!("           or the flags in the commands below");
        hourglass = format!(
            "hourglass --ca {} --cert {} --key {}",
            ca.display(),
            crt.display(),
            key.display()
        );
    }
    let list = endpoints.join(",");
    println!("try:       {hourglass} --endpoints {list} timer schedule --workflow order-1 --id reminder --in 30s --payload hello");
    println!("           {hourglass} --endpoints {list} worker --queue default");
    println!("           {hourglass} --endpoints {list} cluster status");
    println!("press Ctrl-C to stop");
    stop_signal().await;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// The CA, every node's certificate and the admin's in `dir`; what exists already is kept, so
/// a reused data directory keeps its credentials.
fn dev_certs(dir: &Path, nodes: u32) -> anyhow::Result<()> {
    if !dir.join("ca.crt").exists() {
        crate::cert_cmd::init(dir)?;
    }
    for i in 1..=u64::from(nodes) {
        if !dir.join(format!("{}.crt", node_name(i))).exists() {
            crate::cert_cmd::node(i, dir, Vec::new())?;
        }
    }
    if !dir.join("client-admin.crt").exists() {
        crate::cert_cmd::client("admin", dir, Role::Admin)?;
    }
    Ok(())
}

/// Waits until every partition reports a leader.
async fn wait_for_leaders(endpoints: &[String], tls: Option<Tls>) -> Result<(), Failure> {
    let client = Client::with_options(endpoints, RetryPolicy::default(), tls)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(status) = client.cluster_status().await {
            if status.partitions.iter().all(|p| p.leader != 0) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!("partitions still without a leader after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
