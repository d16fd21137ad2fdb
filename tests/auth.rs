//! Authentication and roles on the client port of a TLS cluster, on real processes: client
//! certificates and bearer tokens from a tokens file that is reread while the nodes run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hourglass_client::{Client, RetryPolicy, Tls};
use hourglass_tests::secure::{code, eventually, worker_stream, Credential};
use hourglass_tests::{cert, hourglass_bin, schedule_in, Cluster, Options};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A token made by `hourglass token new --json`: (secret, its tokens file entry).
fn new_token(name: &str, args: &[&str]) -> Result<(String, String)> {
    let out = Command::new(hourglass_bin())
        .args(["--json", "token", "new", name])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("token new: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["token"].as_str().context("token")?.to_owned(),
        v["entry"].as_str().context("entry")?.to_owned(),
    ))
}

/// A client of `nodes` that gives up quickly (refusals are final anyway).
fn client(cluster: &Cluster, nodes: &[u64], tls: Tls) -> Result<Client> {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|&i| cluster.node(i).addr.clone())
        .collect();
    Ok(Client::with_options(
        &endpoints,
        RetryPolicy {
            budget: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
        },
        Some(tls),
    )?)
}

/// A TLS cluster reading `tokens_file`, and its certificates' directory.
async fn secure_cluster(tokens_file: &Path) -> Result<(Cluster, PathBuf)> {
    let cluster = Cluster::start(Options {
        tls: true,
        extra_toml: format!("[auth]\ntokens_file = \"{}\"\n", tokens_file.display()),
        ..Options::default()
    })
    .await?;
    let certs = cluster.certs.clone().context("TLS cluster")?;
    Ok((cluster, certs))
}

fn ca_only(certs: &Path) -> Result<Tls> {
    Ok(Tls::from_files(&certs.join("ca.crt"), None)?)
}

fn with_cert(certs: &Path, name: &str) -> Result<Tls> {
    let (crt, key) = (
        certs.join(format!("client-{name}.crt")),
        certs.join(format!("client-{name}.key")),
    );
    Ok(Tls::from_files(&certs.join("ca.crt"), Some((&crt, &key)))?)
}

/// What a Subscribe to `queue` on node 1 answers, presenting `credential`.
async fn subscribe(
    cluster: &Cluster,
    ca: &Path,
    credential: Credential<'_>,
    queue: &str,
) -> Result<(), Code> {
    worker_stream(&cluster.node(1).addr, 1, ca, credential, queue)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_and_roles_are_enforced_and_tokens_reload() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens_file: PathBuf = dir.path().join("tokens.toml");
    let (admin_token, admin_entry) = new_token("ops", &["--role", "admin"])?;
    let (client_token, client_entry) = new_token("billing", &["--prefix", "a/"])?;
    let (worker_token, worker_entry) =
        new_token("mailer", &["--role", "worker", "--queue", "jobs"])?;
    std::fs::write(
        &tokens_file,
        format!("{admin_entry}\n{client_entry}\n{worker_entry}"),
    )?;
    let (cluster, certs) = secure_cluster(&tokens_file).await?;
    let ca = certs.join("ca.crt");
    let all = [1, 2, 3];

    // No credentials: UNAUTHENTICATED everywhere but health (and reflection).
    let anonymous = client(&cluster, &[1], ca_only(&certs)?)?;
    let before = cluster.metric(1, "hourglass_client_calls_refused_total")?;
    assert_eq!(
        code(anonymous.cluster_status().await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(
            anonymous
                .schedule(schedule_in("a/1", "t", Duration::from_secs(60), ""))
                .await
        ),
        Some(Code::Unauthenticated)
    );
    let health = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca)?))
        .domain_name("node-1");
    let channel = Channel::from_shared(format!("https://{}", cluster.node(1).addr))?
        .tls_config(health)?
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    // A token that is not in the file.
    let unknown = client(&cluster, &[1], ca_only(&certs)?.with_token("hgt_unknown")?)?;
    assert_eq!(
        code(unknown.cluster_status().await),
        Some(Code::Unauthenticated)
    );

    // An admin certificate and an admin token may do everything; calls forwarded between
    // the nodes (with their node certificates) go through.
    let admin_cert = cluster.client();
    let admin = client(&cluster, &all, ca_only(&certs)?.with_token(&admin_token)?)?;
    for (who, c) in [("admin cert", &admin_cert), ("admin token", &admin)] {
        for i in 0..8 {
            c.schedule(schedule_in(
                &format!("z/{i}"),
                who,
                Duration::from_secs(60),
                "",
            ))
            .await
            .with_context(|| format!("{who} schedules z/{i}"))?;
        }
        c.cluster_status().await.context(who)?;
    }
    assert_eq!(
        subscribe(&cluster, &ca, Credential::Token(&admin_token), "any").await,
        Ok(())
    );

    // A worker certificate may not schedule.
    let dir_arg = certs.to_str().context("UTF-8 path")?;
    cert(&["client", "carol", "--dir", dir_arg, "--role", "worker"])?;
    let worker_cert = client(&cluster, &[1], with_cert(&certs, "carol")?)?;
    assert_eq!(
        code(
            worker_cert
                .schedule(schedule_in("a/1", "t", Duration::from_secs(60), ""))
                .await
        ),
        Some(Code::PermissionDenied)
    );
    // Workers find the nodes through ClusterStatus.
    worker_cert.cluster_status().await?;

    // A client token limited to "a/": its own workflows on any node (some forwarded), not
    // "b/x", and no subscriptions.
    let billing = client(&cluster, &[1], ca_only(&certs)?.with_token(&client_token)?)?;
    for i in 0..8 {
        billing
            .schedule(schedule_in(
                &format!("a/{i}"),
                "t",
                Duration::from_secs(60),
                "",
            ))
            .await
            .with_context(|| format!("the client token schedules a/{i}"))?;
    }
    billing.get("a/0", "t").await?;
    assert_eq!(code(billing.list("a/0").await.map(|_| ())), None);
    let e = billing
        .schedule(schedule_in("b/x", "t", Duration::from_secs(60), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied));
    assert_eq!(e.reason().as_deref(), Some("PERMISSION_DENIED"));
    assert_eq!(
        code(billing.cancel("b/x", "t").await),
        Some(Code::PermissionDenied)
    );
    let batch = billing
        .schedule_batch(vec![
            schedule_in("a/9", "t", Duration::from_secs(60), ""),
            schedule_in("b/9", "t", Duration::from_secs(60), ""),
        ])
        .await;
    assert_eq!(code(batch), Some(Code::PermissionDenied));
    assert_eq!(
        subscribe(&cluster, &ca, Credential::Token(&client_token), "jobs").await,
        Err(Code::PermissionDenied)
    );

    // A worker token subscribes to its queue only.
    assert_eq!(
        subscribe(&cluster, &ca, Credential::Token(&worker_token), "jobs").await,
        Ok(())
    );
    assert_eq!(
        subscribe(&cluster, &ca, Credential::Token(&worker_token), "other").await,
        Err(Code::PermissionDenied)
    );
    let refused = cluster.metric(1, "hourglass_client_calls_refused_total")? - before;
    assert!(refused >= 9.0, "{refused} refusals counted");

    // The CLI sends a token from a file.
    let token_file = dir.path().join("billing.token");
    std::fs::write(&token_file, format!("{client_token}\n"))?;
    let cli = |workflow: &str| {
        Command::new(hourglass_bin())
            .args(["--endpoints", &cluster.node(2).addr])
            .arg("--ca")
            .arg(&ca)
            .arg("--token-file")
            .arg(&token_file)
            .args(["timer", "get", "--workflow", workflow, "--id", "t"])
            .output()
    };
    let out = cli("a/1")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli("b/x")?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A tokens file that does not parse keeps the tokens in force.
    std::fs::write(&tokens_file, "[[token]]\nname = \"half-written")?;
    eventually("a failed reload on every node", || async {
        all.iter().all(|&id| {
            cluster
                .metric(id, "hourglass_tokens_file_reload_failures_total")
                .unwrap_or(0.0)
                >= 1.0
        })
    })
    .await?;
    billing
        .get("a/0", "t")
        .await
        .context("after a bad reload")?;

    // Removing the client token revokes it on every node; the others stay.
    std::fs::write(&tokens_file, format!("{admin_entry}\n{worker_entry}"))?;
    for id in all {
        let revoked = client(&cluster, &[id], ca_only(&certs)?.with_token(&client_token)?)?;
        eventually("the token's revocation", || async {
            code(revoked.get("a/0", "t").await) == Some(Code::Unauthenticated)
        })
        .await?;
    }
    admin
        .get("a/0", "t")
        .await
        .context("admin after the reload")?;
    Ok(())
}

/// The `[[certificate]]` entry `hourglass cert client NAME ARGS` printed, making the
/// certificate in `certs`.
fn limited_cert(certs: &Path, name: &str, args: &[&str]) -> Result<String> {
    let dir = certs.to_str().context("UTF-8 path")?;
    let out = cert(&[&["client", name, "--dir", dir], args].concat())?;
    let at = out
        .find("[[certificate]]")
        .with_context(|| format!("no entry printed: {out}"))?;
    Ok(out[at..].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_entries_limit_certificates_and_reload() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens_file: PathBuf = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, "")?;
    let (cluster, certs) = secure_cluster(&tokens_file).await?;
    let ca = certs.join("ca.crt");
    let all = [1, 2, 3];
    let app_entry = limited_cert(&certs, "app", &["--role", "client", "--prefix", "a-"])?;
    let mailer_entry = limited_cert(&certs, "mailer", &["--role", "worker", "--queue", "q1"])?;
    // An entry the nodes would refuse is refused before the certificate is written.
    assert!(limited_cert(&certs, "odd", &["--role", "worker", "--prefix", "a-"]).is_err());
    assert!(!certs.join("client-odd.crt").exists());
    std::fs::write(&tokens_file, format!("{app_entry}\n{mailer_entry}"))?;

    // The entry limits the certificate on every node once they reread the file.
    for id in all {
        let app = client(&cluster, &[id], with_cert(&certs, "app")?)?;
        eventually("the certificate's prefixes", || async {
            code(app.get("b-1", "t").await) == Some(Code::PermissionDenied)
        })
        .await?;
    }
    let app = client(&cluster, &all, with_cert(&certs, "app")?)?;
    app.schedule(schedule_in("a-1", "t", Duration::from_secs(60), ""))
        .await
        .context("the limited certificate schedules a-1")?;
    assert_eq!(
        code(
            app.schedule(schedule_in("b-1", "t", Duration::from_secs(60), ""))
                .await
        ),
        Some(Code::PermissionDenied)
    );

    let (mailer_crt, mailer_key) = (
        certs.join("client-mailer.crt"),
        certs.join("client-mailer.key"),
    );
    let mailer = Credential::Certificate(&mailer_crt, &mailer_key);
    assert_eq!(subscribe(&cluster, &ca, mailer, "q1").await, Ok(()));
    assert_eq!(
        subscribe(&cluster, &ca, mailer, "q2").await,
        Err(Code::PermissionDenied)
    );

    // Removing the entry gives the certificate its whole role back, without re-issuing it.
    std::fs::write(&tokens_file, &mailer_entry)?;
    for id in all {
        let app = client(&cluster, &[id], with_cert(&certs, "app")?)?;
        eventually("the certificate's prefixes lifted", || async {
            code(app.get("b-1", "t").await) == Some(Code::NotFound)
        })
        .await?;
    }
    app.schedule(schedule_in("b-1", "t", Duration::from_secs(60), ""))
        .await
        .context("the certificate schedules b-1 once its entry is removed")?;
    assert_eq!(
        subscribe(&cluster, &ca, mailer, "q2").await,
        Err(Code::PermissionDenied)
    );

    // A revoked certificate is refused on every node once they reread the file; the others
    // keep working.
    let app_crt = certs.join("client-app.crt");
    let out = cert(&["revoke", app_crt.to_str().context("UTF-8 path")?])?;
    let revoked = &out[out.find("[[revoked]]").context("no entry printed")?..];
    assert!(revoked.contains("CN=app"), "{revoked}");
    std::fs::write(&tokens_file, format!("{mailer_entry}\n{revoked}"))?;
    for id in all {
        let app = client(&cluster, &[id], with_cert(&certs, "app")?)?;
        eventually("the certificate revoked", || async {
            code(app.get("a-1", "t").await) == Some(Code::Unauthenticated)
        })
        .await?;
    }
    assert_eq!(subscribe(&cluster, &ca, mailer, "q1").await, Ok(()));
    Ok(())
}
