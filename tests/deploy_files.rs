//! The deployment files under deploy/. No Docker engine or Kubernetes cluster runs here, so
//! they are checked as far as the tools allow: YAML parsed and its structure checked, every
//! embedded or example node configuration validated by `hourglass serve --print-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use hourglass_tests::hourglass_bin;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Validates a node configuration with the real binary; extra flags fill per-node keys. The
/// effective configuration.
fn assert_valid_config(toml: &Path, extra: &[&str]) -> toml::Table {
    let out = Command::new(hourglass_bin())
        .args(["serve", "--print-config", "--config"])
        .arg(toml)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} rejected: {}",
        toml.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

/// The effective configuration runs with TLS and requires credentials; the files it names
/// (certificates, key, tokens) lie under one of `mounts`, the directories the deployment
/// provides them in. Returns the node certificate's path.
fn assert_secured(printed: &toml::Table, mounts: &[&str]) -> String {
    let key = |section: &str, key: &str| {
        printed[section][key]
            .as_str()
            .unwrap_or_else(|| panic!("{section}.{key} missing: {printed}"))
            .to_owned()
    };
    let files = [
        key("tls", "ca"),
        key("tls", "cert"),
        key("tls", "key"),
        key("auth", "tokens_file"),
    ];
    for file in &files {
        assert!(
            mounts
                .iter()
                .any(|m| file.starts_with(&format!("{}/", m.trim_end_matches('/')))),
            "{file} is under none of {mounts:?}"
        );
    }
    assert_eq!(printed["auth"]["required"].as_bool(), Some(true));
    files[1].clone()
}

#[test]
fn docker_compose_describes_three_distinct_nodes() {
    let text = std::fs::read_to_string(repo().join("deploy/docker/docker-compose.yml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let services = doc["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 3);
    let mut ids = Vec::new();
    for (_, s) in services {
        // Merge keys (<<) are resolved by compose; check the node-specific keys directly.
        let env = &s["environment"];
        ids.push(env["HOURGLASS_NODE_ID"].as_str().unwrap().to_owned());
        assert!(env["HOURGLASS_ADVERTISE"]
            .as_str()
            .unwrap()
            .ends_with(":7001"));
        let volumes = s["volumes"].as_sequence().unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(volumes
            .iter()
            .any(|v| v.as_str() == Some("./certs:/etc/hourglass/certs:ro")));
    }
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"]);
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked -p hourglass"));
    assert!(dockerfile.contains("COPY --from=build /hourglass /usr/local/bin/hourglass"));
}

/// Each compose node's variables (the shared ones, its own and the image's `ENV`) make a valid
/// configuration of that node.
#[test]
fn docker_compose_environment_is_a_valid_configuration() {
    let text = std::fs::read_to_string(repo().join("deploy/docker/docker-compose.yml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let image_env: Vec<(String, String)> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(image_env.iter().any(|(k, _)| k == "HOURGLASS_LISTEN"));
    let strings = |map: &Value| -> Vec<(String, String)> {
        map.as_mapping()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.as_str() != Some("<<"))
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let shared = strings(&doc["x-node"]["environment"]);
    for (name, service) in doc["services"].as_mapping().unwrap() {
        let mut command = Command::new(hourglass_bin());
        for (var, _) in std::env::vars() {
            if var.starts_with("HOURGLASS_") {
                command.env_remove(var);
            }
        }
        let own = strings(&service["environment"]);
        let out = command
            .args(["serve", "--print-config"])
            .envs(image_env.iter().chain(&shared).chain(&own).cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
        let id = own.iter().find(|(k, _)| k == "HOURGLASS_NODE_ID").unwrap();
        assert_eq!(printed["node_id"].to_string(), id.1);
        assert_eq!(printed["peers"].as_array().unwrap().len(), 3);
        assert_eq!(printed["data_dir"].as_str(), Some("/var/lib/hourglass"));
        let mounts: Vec<&str> = service["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str()?.split(':').nth(1))
            .collect();
        let cert = assert_secured(&printed, &mounts);
        assert_eq!(cert, format!("/etc/hourglass/certs/node-{}.crt", id.1));
    }
    // The image alone runs with TLS too: it names the three files, the deployment mounts them.
    for key in [
        "HOURGLASS_TLS__CA",
        "HOURGLASS_TLS__CERT",
        "HOURGLASS_TLS__KEY",
    ] {
        assert!(image_env.iter().any(|(k, _)| k == key), "{key} missing");
    }
}

#[test]
fn kubernetes_manifests_have_what_a_statefulset_needs() {
    let text = std::fs::read_to_string(repo().join("deploy/k8s/hourglass.yaml")).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in ["ConfigMap", "Service", "PodDisruptionBudget", "StatefulSet"] {
        assert!(kinds.contains(&kind), "{kind} missing");
    }
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["args"][0]
        .as_str()
        .unwrap()
        .contains("HOURGLASS_NODE_ID=$(( ${HOSTNAME##*-} + 1 ))"));
    let headless = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless service");
    assert_eq!(headless["metadata"]["name"], sts["spec"]["serviceName"]);
    // The embedded configuration is valid once the pod supplies its id and address.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("node.toml");
    std::fs::write(&toml, cm["data"]["node.toml"].as_str().unwrap()).unwrap();
    // Each pod adds its own certificate, by its node id, from the Secret's files.
    let args = container["args"][0].as_str().unwrap();
    for flag in [
        "--tls-cert \"/etc/hourglass/tls/node-${HOURGLASS_NODE_ID}.crt\"",
        "--tls-key \"/etc/hourglass/tls/node-${HOURGLASS_NODE_ID}.key\"",
    ] {
        assert!(args.contains(flag), "{flag} missing from {args}");
    }
    let printed = assert_valid_config(
        &toml,
        &[
            "--node-id",
            "2",
            "--advertise",
            "hourglass-1.hourglass:7001",
            "--peer-advertise",
            "hourglass-1.hourglass:8001",
            "--tls-cert",
            "/etc/hourglass/tls/node-2.crt",
            "--tls-key",
            "/etc/hourglass/tls/node-2.key",
        ],
    );
    // The certificates and the tokens file are mounted from Secrets.
    let pod = &sts["spec"]["template"]["spec"];
    let mut secret_mounts = Vec::new();
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        // The data volume comes from the claim templates instead.
        let Some(volume) = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
        else {
            continue;
        };
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            assert_eq!(mount["readOnly"].as_bool(), Some(true), "{secret}");
            secret_mounts.push(mount["mountPath"].as_str().unwrap());
        }
    }
    assert_eq!(secret_mounts.len(), 2, "{secret_mounts:?}");
    assert_secured(&printed, &secret_mounts);
}

#[test]
fn systemd_unit_and_example_config() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/hourglass.service")).unwrap();
    for line in [
        "[Unit]",
        "[Service]",
        "[Install]",
        "ExecStart=/usr/local/bin/hourglass serve --config /etc/hourglass/node.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let printed = assert_valid_config(&repo().join("deploy/systemd/node.toml.example"), &[]);
    assert_secured(&printed, &["/etc/hourglass"]);
}

/// Every metric the Grafana dashboard queries is one the nodes export.
#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/hourglass.json")).unwrap(),
    )
    .unwrap();
    let metrics =
        std::fs::read_to_string(repo().join("crates/hourglass-server/src/metrics.rs")).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("hourglass_"))
            {
                let base = name
                    .trim_start_matches("hourglass_")
                    .trim_end_matches("_bucket");
                assert!(
                    metrics.contains(&format!("\"{base}\"")),
                    "{name} is not defined in metrics.rs"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10);
}

/// Runs `deploy/install-deps.sh --check` against a fake filesystem root holding `files`
/// (executables under a `bin` directory are made executable): exit code and stderr.
fn deps_check(files: &[&str]) -> (i32, String) {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    for f in files {
        let path = root.path().join(f.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        if f.contains("/bin/") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let out = Command::new(repo().join("deploy/install-deps.sh"))
        .arg("--check")
        .env("HOURGLASS_DEPS_ROOT", root.path())
        .env_remove("LIBCLANG_PATH")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const HEADERS: &str = "/usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h";

#[test]
fn install_deps_requires_the_libclang_bindgen_loads() {
    // A stock Debian machine with LLVM's runtime: libclang-cpp is there, libclang is not.
    let (code, err) = deps_check(&["/usr/lib/llvm-14/lib/libclang-cpp.so.14", "/usr/bin/c++"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("libclang.so") && err.contains("libclang-dev"),
        "{err}"
    );
    let (code, err) = deps_check(&[
        "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
        "/usr/lib/x86_64-linux-gnu/libclang_rt.asan.so",
        "/usr/bin/c++",
        HEADERS,
    ]);
    assert_eq!(code, 1, "{err}");
    // Each name clang-sys tries, in each place it looks, is enough (with the headers).
    for lib in [
        "/usr/lib/llvm-14/lib/libclang.so",
        "/usr/lib/llvm-14/lib/libclang-14.so.1",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "/usr/lib/x86_64-linux-gnu/libclang.so.1",
        "/usr/lib/llvm-16/lib/libclang-16.so",
        "/usr/local/lib/libclang.so",
    ] {
        let (code, err) = deps_check(&[lib, "/usr/bin/c++", HEADERS]);
        assert_eq!(code, 0, "{lib}: {err}");
    }
}

#[test]
fn install_deps_requires_clang_headers_and_a_cxx_compiler() {
    let lib = "/usr/lib/llvm-14/lib/libclang-14.so.1";
    let (code, err) = deps_check(&[lib, "/usr/bin/c++"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("builtin headers") && err.contains("libclang-dev"),
        "{err}"
    );
    let (code, err) = deps_check(&[lib, HEADERS]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("C++ compiler") && err.contains("g++"), "{err}");
    let (code, err) = deps_check(&[lib, HEADERS, "/usr/bin/g++"]);
    assert_eq!(code, 0, "{err}");
    // Nothing at all: both packages named in one command, libclang-dev once.
    let (code, err) = deps_check(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("apt-get install -y libclang-dev g++"), "{err}");
}
