//! `hourglass cert`: the cluster CA and the certificates of nodes and clients (rcgen).
//!
//! Files in `--dir`: `ca.crt`/`ca.key`, `node-ID.crt`/`.key`, `client-NAME.crt`/`.key`; keys
//! are written with mode 0600 and never overwritten. A node's certificate is valid for the
//! DNS name `node-ID` (its identity: the peer port and dialing nodes check it, see
//! hourglass-server's tls.rs) and for the `--host` names and addresses clients reach it at. A
//! client certificate's prefixes or queues are not in it but in a `[[certificate]]` entry of
//! the tokens file, which `cert client` prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hourglass_server::auth::{revocation_entry, CertificateEntry, Role};
use hourglass_server::tls::node_name;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::cli::CertCommand;
use crate::token_cmd::{check_entry, print_entry};
use crate::Failure;

const DAY: Duration = Duration::from_secs(86_400);
/// The CA outlives the certificates it signs: rotating it means re-issuing every one.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Node and client certificates are rotated yearly (docs/operations.md, "Rotation").
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

pub fn run(cmd: CertCommand) -> Result<(), Failure> {
    match cmd {
        CertCommand::Init { dir } => {
            init(&dir)?;
            println!("CA written to {}/ca.crt (key ca.key: keep it offline once the certificates are made)", dir.display());
        }
        CertCommand::Node { id, dir, host } => {
            node(id, &dir, host)?;
            println!(
                "node {id}: {0}/{1}.crt and {0}/{1}.key",
                dir.display(),
                node_name(id)
            );
        }
        CertCommand::Client {
            name,
            dir,
            role,
            prefixes,
            queues,
        } => {
            let role = Role::from(role);
            // Limits go to the tokens file, not into the certificate, so they can change
            // without re-issuing it. The entry names the role so that it cannot apply to a
            // certificate of another role by the same name.
            let entry = (!prefixes.is_empty() || !queues.is_empty()).then(|| {
                CertificateEntry {
                    name: name.clone(),
                    role: Some(role),
                    prefixes,
                    queues,
                }
                .to_toml()
            });
            // Checked before the certificate is written: a refused entry leaves nothing behind.
            if let Some(toml) = &entry {
                check_entry(toml)?;
            }
            let file = client(&name, &dir, role)?;
            println!(
                "client {name} (role {}): {1}/{file}.crt and {1}/{file}.key",
                role.as_str(),
                dir.display()
            );
            if let Some(toml) = &entry {
                print_entry(toml);
            }
        }
        CertCommand::Revoke { file, note } => {
            let pem =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut entry =
                revocation_entry(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if note.is_some() {
                entry.note = note;
            }
            let toml = entry.to_toml();
            check_entry(&toml)?;
            print_entry(&toml);
        }
    }
    Ok(())
}

/// Creates the CA: `dir/ca.crt` and `dir/ca.key`.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_pair(dir, "ca", &cert, &key)
}

/// Creates node `id`'s certificate, valid for `hosts` too (none: localhost and 127.0.0.1).
pub fn node(id: u64, dir: &Path, hosts: Vec<String>) -> anyhow::Result<()> {
    if id == 0 {
        bail!("node ids are positive integers");
    }
    let (ca, ca_key) = load_ca(dir)?;
    let hosts = if hosts.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        hosts
    };
    let mut names = vec![node_name(id)];
    names.extend(hosts);
    let mut params = leaf_params(names, &node_name(id))?;
    // A node both serves (its ports) and dials (its peers).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    write_pair(dir, &node_name(id), &cert, &key)
}

/// Creates client `name`'s certificate carrying `role`; returns the files' name without
/// extension (`client-NAME`).
pub fn client(name: &str, dir: &Path, role: Role) -> anyhow::Result<String> {
    check_name(name)?;
    let (ca, ca_key) = load_ca(dir)?;
    // No SAN: a client certificate is valid for no name, so never for a node's.
    let mut params = leaf_params(Vec::new(), name)?;
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let file = format!("client-{name}");
    write_pair(dir, &file, &cert, &key)?;
    Ok(file)
}

/// Client names, in certificates and tokens alike: letters, digits, '.', '_' and '-'.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("client names are made of letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Sets a certificate's validity from a day ago (clocks differ) to `validity` from now.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    params.not_before = now - DAY;
    params.not_after = now + validity;
}

/// The CA's parameters. Signing rebuilds the CA certificate from these and its key: a
/// certificate's issuer is the CA's name and key identifier (from its public key), so the
/// rebuilt one signs exactly as the one on disk.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Hourglass cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    Ok(params)
}

fn leaf_params(names: Vec<String>, common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    set_validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn load_ca(dir: &Path) -> anyhow::Result<(Certificate, KeyPair)> {
    let path = dir.join("ca.key");
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the CA key {} (create the CA first: hourglass cert init --dir {})",
            path.display(),
            dir.display()
        )
    })?;
    let key =
        KeyPair::from_pem(&pem).with_context(|| format!("{} is not a key", path.display()))?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((cert, key))
}

/// Writes `NAME.crt` and `NAME.key` (0600), refusing to replace either.
fn write_pair(dir: &Path, name: &str, cert: &Certificate, key: &KeyPair) -> anyhow::Result<()> {
    let crt = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&crt, &key_path] {
        if path.exists() {
            bail!(
                "{} exists: remove it first to issue a new one",
                path.display()
            );
        }
    }
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &PathBuf, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
