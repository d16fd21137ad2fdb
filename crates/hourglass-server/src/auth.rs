//! Who may call what on the client port: pure decisions, no I/O and no tonic.
//!
//! A call is first *authenticated* ([`authenticate`]): its credentials, a bearer token or the
//! TLS client certificate the handshake already verified against the cluster CA, become a
//! [`Caller`]. Then each handler *authorizes* it ([`authorize`]) once it knows what the call
//! touches (the workflow ids of a Timers call, the queue of a subscription), before any work.
//! The tonic side (the interceptor, the tokens file's reloading) is in `client_auth.rs`.
//!
//! Roles:
//! - `admin`: every call;
//! - `client`: the Timers calls, on workflows whose id starts with one of its prefixes (all
//!   workflows when it has none);
//! - `worker`: subscriptions (and so acks, which only apply to the stream's own deliveries)
//!   to its queues (all queues when it has none).
//!
//! Every authenticated caller may call `Admin.ClusterStatus`: the SDKs' workers find the
//! nodes to subscribe to through it, and it shows no timer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hourglass_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::tls::member_named;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Client,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            other => Err(format!("{other:?} is not a role (admin, client or worker)")),
        }
    }
}

/// A person or program the cluster knows: a client certificate's CN and OU (with the limits
/// of its `[[certificate]]` entry in the tokens file, if any), or a token's entry there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// For `client`: the workflow id prefixes it may touch; empty for all.
    pub prefixes: Vec<String>,
    /// For `worker`: the queues it may subscribe to; empty for all.
    pub queues: Vec<String>,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (plaintext, or `auth.required = false` and no credentials).
    Open,
    /// A member node forwarding a Timers call to a partition's leader: the node it was first
    /// sent to has authorized it already.
    Node(NodeId),
    Identity(Arc<Identity>),
}

/// What a call touches, as far as authorization cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call<'a> {
    /// A Timers method (`Schedule`, `Cancel`, …) on these workflows (every item of a batch).
    Timers {
        method: &'static str,
        workflow_ids: Vec<&'a str>,
    },
    /// `Workers.Subscribe` to a queue.
    Subscribe { queue: &'a str },
    /// `Admin.ClusterStatus`.
    ClusterStatus,
}

/// Whether `caller` may make `call`: PERMISSION_DENIED saying why when not.
pub fn authorize(caller: &Caller, call: &Call) -> Result<(), Error> {
    let identity = match caller {
        Caller::Open => return Ok(()),
        Caller::Node(id) => {
            return match call {
                Call::Timers { .. } => Ok(()),
                _ => Err(Error::PermissionDenied(format!(
                    "node {id} only forwards Timers calls"
                ))),
            }
        }
        Caller::Identity(identity) => identity,
    };
    let denied = |what: String| {
        Err(Error::PermissionDenied(format!(
            "{} (role {}) may not {what}",
            identity.name, identity.role
        )))
    };
    match (identity.role, call) {
        (Role::Admin, _) | (_, Call::ClusterStatus) => Ok(()),
        (
            Role::Client,
            Call::Timers {
                method,
                workflow_ids,
            },
        ) => {
            let allowed = |id: &str| {
                identity.prefixes.is_empty() || identity.prefixes.iter().any(|p| id.starts_with(p))
            };
            match workflow_ids.iter().find(|id| !allowed(id)) {
                None => Ok(()),
                Some(id) => denied(format!(
                    "call {method} on workflow {id:?}: its workflow id prefixes are {:?}",
                    identity.prefixes
                )),
            }
        }
        (Role::Client, Call::Subscribe { .. }) => {
            denied("subscribe: only workers and admins receive deliveries".into())
        }
        (Role::Worker, Call::Subscribe { queue }) => {
            if identity.queues.is_empty() || identity.queues.iter().any(|q| q == queue) {
                Ok(())
            } else {
                denied(format!(
                    "subscribe to queue {queue:?}: its queues are {:?}",
                    identity.queues
                ))
            }
        }
        (Role::Worker, Call::Timers { method, .. }) => denied(format!(
            "call {method}: workers only subscribe and acknowledge"
        )),
    }
}

/// What a call brought to prove who it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The `authorization` metadata, when sent (`None` inside when it is not text).
    pub authorization: Option<Option<&'a str>>,
    /// The caller's TLS certificate (DER), already verified against the cluster CA.
    pub certificate: Option<&'a [u8]>,
}

/// How the client port authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Calls without credentials are refused (else they are [`Caller::Open`]).
    pub required: bool,
    /// The cluster's nodes, whose certificates forward calls.
    pub members: BTreeSet<NodeId>,
}

/// Who `credentials` prove the caller is. A revoked certificate is refused whatever comes
/// with it. A bearer token, when sent, decides alone (a wrong token is refused even with a
/// good certificate: whoever sent it meant to be that identity); then a certificate; nothing
/// at all is UNAUTHENTICATED when `policy` requires credentials.
pub fn authenticate(
    credentials: Credentials,
    tokens: &TokenSet,
    policy: &Policy,
) -> Result<Caller, Error> {
    if credentials
        .certificate
        .is_some_and(|der| tokens.revokes(der))
    {
        return Err(Error::Unauthenticated(
            "this certificate is revoked ([[revoked]] in the tokens file)".into(),
        ));
    }
    if let Some(header) = credentials.authorization {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization metadata must be `Bearer <token>`".into())
            })?;
        return tokens
            .identity(token)
            .map(|i| Caller::Identity(Arc::clone(i)))
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()));
    }
    if let Some(der) = credentials.certificate {
        if let Some(id) = member_named(der, &policy.members) {
            return Ok(Caller::Node(id));
        }
        return certificate_identity(der, tokens).map(|i| Caller::Identity(Arc::new(i)));
    }
    if policy.required {
        return Err(Error::Unauthenticated(
            "this call needs credentials: a client certificate (hourglass cert client) or \
             `authorization: Bearer <token>` (hourglass token new)"
                .into(),
        ));
    }
    Ok(Caller::Open)
}

/// A client certificate's identity: its CN names it, its OU is its role (`hourglass cert
/// client NAME --role ROLE`). Its prefixes or queues come from the `[[certificate]]` entry of
/// that name in the tokens file, so they can be changed without re-issuing it; without an
/// entry it holds the whole role. The entry cannot change the role: one for another role is
/// refused.
fn certificate_identity(der: &[u8], tokens: &TokenSet) -> Result<Identity, Error> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Error::Unauthenticated(format!("unreadable client certificate: {e}")))?;
    let name = subject_attribute(cert.subject(), OID_COMMON_NAME).unwrap_or_default();
    let role = subject_attribute(cert.subject(), OID_ORGANIZATIONAL_UNIT);
    let role = role.and_then(|r| r.parse().ok()).ok_or_else(|| {
        Error::PermissionDenied(format!(
            "the certificate of {name:?} names no role (OU admin, client or worker: \
             hourglass cert client NAME --role ROLE)"
        ))
    })?;
    let Some(entry) = tokens.certificates.get(name) else {
        return Ok(Identity {
            name: name.to_owned(),
            role,
            prefixes: Vec::new(),
            queues: Vec::new(),
        });
    };
    match entry.role() {
        Some(wanted) if wanted != role => Err(Error::PermissionDenied(format!(
            "the certificate of {name:?} has role {role}, but its [[certificate]] entry in the \
             tokens file is for role {wanted}"
        ))),
        _ => Ok(Identity {
            name: name.to_owned(),
            role,
            prefixes: entry.prefixes.clone(),
            queues: entry.queues.clone(),
        }),
    }
}

/// id-at-commonName (2.5.4.3), DER-encoded.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-at-organizationalUnitName (2.5.4.11), DER-encoded.
const OID_ORGANIZATIONAL_UNIT: &[u8] = &[0x55, 0x04, 0x0b];

/// The first DER element of `input`: (tag, contents, the rest). Only the definite lengths DER
/// allows, up to 4 length bytes.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The first value of attribute `oid` in a certificate's subject (the contents of its Name
/// SEQUENCE: RDN SETs of AttributeTypeAndValue SEQUENCEs), when it is a UTF8String or
/// PrintableString, as rcgen writes them. webpki has already parsed and verified the
/// certificate; this only reads a name out of it.
fn subject_attribute<'a>(subject: &'a [u8], oid: &[u8]) -> Option<&'a str> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    let mut rdns = subject;
    while let Some((SET, mut attributes, rest)) = der_element(rdns) {
        rdns = rest;
        while let Some((SEQUENCE, attribute, rest)) = der_element(attributes) {
            attributes = rest;
            let Some((OID, id, value)) = der_element(attribute) else {
                continue;
            };
            match der_element(value) {
                Some((UTF8_STRING | PRINTABLE_STRING, text, _)) if id == oid => {
                    return std::str::from_utf8(text).ok()
                }
                _ => {}
            }
        }
    }
    None
}

/// The hash the tokens file holds for a token: SHA-256, in lowercase hex. Tokens are 256
/// random bits, so a fast hash is enough: no guess can be tested against it faster than
/// against the node itself.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `[[revoked]]` entry that revokes the (first) certificate of a PEM file: its SHA-256
/// fingerprint, and its CN as a note for whoever reads the file.
pub fn revocation_entry(pem: &[u8]) -> Result<RevokedEntry, String> {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in the file")?
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(RevokedEntry {
        sha256: sha256_hex(&der),
        note: subject_attribute(cert.subject(), OID_COMMON_NAME).map(|cn| format!("CN={cn}")),
    })
}

/// A new secret token: `hgt_` and 256 random bits in URL-safe base64.
pub fn new_token() -> Result<String, Error> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Internal("the system's random source failed".into()))?;
    Ok(format!(
        "hgt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// One `[[token]]` of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// [`token_hash`] of the token.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
}

impl TokenEntry {
    /// The entry as it is written in the tokens file.
    pub fn to_toml(&self) -> String {
        entry_toml("token", self)
    }
}

/// One `[[certificate]]` of the tokens file: the limits of the client certificates whose CN
/// is `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    pub name: String,
    /// When given, the certificate's OU must be this role: the file limits a certificate,
    /// it never grants it a role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
}

impl CertificateEntry {
    /// The entry as it is written in the tokens file.
    pub fn to_toml(&self) -> String {
        entry_toml("certificate", self)
    }

    /// The role the certificate must have: the one named, else the only one its prefixes or
    /// queues mean anything for. Limits a certificate of another role cannot obey refuse it
    /// rather than being ignored.
    fn role(&self) -> Option<Role> {
        self.role.or(if !self.prefixes.is_empty() {
            Some(Role::Client)
        } else if !self.queues.is_empty() {
            Some(Role::Worker)
        } else {
            None
        })
    }
}

/// One `[[revoked]]` of the tokens file: a certificate of the cluster CA that the client port
/// refuses from now on (`hourglass cert revoke FILE` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedEntry {
    /// SHA-256 of the certificate's DER, in hex.
    pub sha256: String,
    /// For the reader of the file: whose certificate it was, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RevokedEntry {
    /// The entry as it is written in the tokens file.
    pub fn to_toml(&self) -> String {
        entry_toml("revoked", self)
    }
}

/// `entry` as one `[[table]]` of the tokens file.
fn entry_toml<T: Serialize>(table: &str, entry: &T) -> String {
    toml::to_string(&HashMap::from([(table, [entry])])).expect("a tokens file entry serializes")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertificateEntry>,
    #[serde(default)]
    revoked: Vec<RevokedEntry>,
}

/// The checks the limits of a token and of a certificate share; `role` is None for a
/// certificate entry that names none.
fn check_limits(role: Option<Role>, prefixes: &[String], queues: &[String]) -> Result<(), String> {
    if !prefixes.is_empty() && role.is_some_and(|r| r != Role::Client) {
        return Err("only the client role takes prefixes".into());
    }
    if !queues.is_empty() && role.is_some_and(|r| r != Role::Worker) {
        return Err("only the worker role takes queues".into());
    }
    if !prefixes.is_empty() && !queues.is_empty() {
        return Err(
            "prefixes are for the client role and queues for the worker role: not both".into(),
        );
    }
    if prefixes.iter().any(String::is_empty) {
        return Err(
            "an empty prefix would allow every workflow: leave prefixes out instead".into(),
        );
    }
    Ok(())
}

/// A SHA-256 as the tokens file may write it, in the one spelling the set compares.
fn hex_sha256(text: &str) -> Option<String> {
    let hash = text.to_ascii_lowercase();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// The tokens a node accepts, by hash, the limits of client certificates, by name, and the
/// certificates it refuses, by fingerprint.
/// Looking a token up by its hash compares hashes, never the secret, so the lookup's timing
/// tells nothing usable about any token.
#[derive(Debug, Default)]
pub struct TokenSet {
    by_hash: HashMap<String, Arc<Identity>>,
    certificates: HashMap<String, CertificateEntry>,
    /// Fingerprints of revoked certificates.
    revoked: HashSet<String>,
}

impl TokenSet {
    /// Reads a tokens file's text (TOML, one `[[token]]` per token, one `[[certificate]]` per
    /// limited certificate).
    pub fn parse(text: &str) -> Result<TokenSet, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = |msg: String| format!("token {} ({:?}): {msg}", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(at("name is empty".into()));
            }
            let Some(hash) = hex_sha256(&entry.sha256) else {
                return Err(at(
                    "sha256 must be 64 hexadecimal digits (hourglass token new prints it)".into(),
                ));
            };
            check_limits(Some(entry.role), &entry.prefixes, &entry.queues).map_err(at)?;
            let identity = Identity {
                name: entry.name.clone(),
                role: entry.role,
                prefixes: entry.prefixes.clone(),
                queues: entry.queues.clone(),
            };
            if by_hash.insert(hash, Arc::new(identity)).is_some() {
                return Err(at("the same sha256 is listed twice".into()));
            }
        }
        let mut certificates = HashMap::new();
        for (i, entry) in file.certificate.into_iter().enumerate() {
            let at = |msg: String| format!("certificate {} ({:?}): {msg}", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(at("name is empty".into()));
            }
            check_limits(entry.role, &entry.prefixes, &entry.queues).map_err(at)?;
            // Two entries would leave which limits hold to the order of the file.
            if certificates.contains_key(&entry.name) {
                return Err(at("the same name is listed twice".into()));
            }
            certificates.insert(entry.name.clone(), entry);
        }
        let mut revoked = HashSet::new();
        for (i, entry) in file.revoked.into_iter().enumerate() {
            revoked.insert(hex_sha256(&entry.sha256).ok_or_else(|| {
                format!(
                    "revoked {}: sha256 must be 64 hexadecimal digits (hourglass cert revoke \
                     prints it)",
                    i + 1
                )
            })?);
        }
        Ok(TokenSet {
            by_hash,
            certificates,
            revoked,
        })
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// How many certificates it limits.
    pub fn certificate_count(&self) -> usize {
        self.certificates.len()
    }

    /// How many certificates it revokes.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    fn revokes(&self, der: &[u8]) -> bool {
        !self.revoked.is_empty() && self.revoked.contains(&sha256_hex(der))
    }

    fn identity(&self, token: &str) -> Option<&Arc<Identity>> {
        self.by_hash.get(&token_hash(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: Role, prefixes: &[&str], queues: &[&str]) -> Caller {
        Caller::Identity(Arc::new(Identity {
            name: "alice".into(),
            role,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }))
    }

    fn timers<'a>(method: &'static str, ids: &[&'a str]) -> Call<'a> {
        Call::Timers {
            method,
            workflow_ids: ids.to_vec(),
        }
    }

    fn allowed(caller: &Caller, call: &Call) -> bool {
        match authorize(caller, call) {
            Ok(()) => true,
            Err(Error::PermissionDenied(_)) => false,
            Err(e) => panic!("not a denial: {e}"),
        }
    }

    #[test]
    fn admins_and_open_ports_may_do_everything() {
        for caller in [Caller::Open, identity(Role::Admin, &[], &[])] {
            assert!(allowed(&caller, &timers("Schedule", &["any/x"])));
            assert!(allowed(&caller, &Call::Subscribe { queue: "q" }));
            assert!(allowed(&caller, &Call::ClusterStatus));
        }
    }

    #[test]
    fn clients_touch_their_prefixes_only_and_never_subscribe() {
        let all = identity(Role::Client, &[], &[]);
        assert!(allowed(&all, &timers("Cancel", &["b/x"])));
        assert!(!allowed(&all, &Call::Subscribe { queue: "q" }));
        assert!(allowed(&all, &Call::ClusterStatus));

        let limited = identity(Role::Client, &["a/", "c-"], &[]);
        for method in ["Schedule", "Cancel", "Get", "List"] {
            assert!(allowed(&limited, &timers(method, &["a/x"])));
            assert!(allowed(&limited, &timers(method, &["c-1"])));
            assert!(!allowed(&limited, &timers(method, &["b/x"])));
            // A prefix is matched as text, not as a path: "a" alone is not under "a/".
            assert!(!allowed(&limited, &timers(method, &["a"])));
        }
        // One item outside the prefixes refuses the whole batch.
        assert!(allowed(
            &limited,
            &timers("ScheduleBatch", &["a/1", "c-2", "a/3"])
        ));
        let e = authorize(&limited, &timers("ScheduleBatch", &["a/1", "b/2"])).unwrap_err();
        assert!(e.to_string().contains("\"b/2\""), "{e}");
        assert!(e.to_string().contains("alice (role client)"), "{e}");
    }

    #[test]
    fn workers_subscribe_to_their_queues_only() {
        let all = identity(Role::Worker, &[], &[]);
        assert!(allowed(&all, &Call::Subscribe { queue: "any" }));
        assert!(!allowed(&all, &timers("Schedule", &["a/x"])));
        assert!(!allowed(&all, &timers("Get", &["a/x"])));
        assert!(allowed(&all, &Call::ClusterStatus));

        let limited = identity(Role::Worker, &[], &["emails", "sms"]);
        assert!(allowed(&limited, &Call::Subscribe { queue: "sms" }));
        assert!(!allowed(&limited, &Call::Subscribe { queue: "sm" }));
        assert!(!allowed(&limited, &Call::Subscribe { queue: "default" }));
    }

    #[test]
    fn nodes_only_forward_timers_calls() {
        let node = Caller::Node(2);
        assert!(allowed(&node, &timers("ScheduleBatch", &["x", "y"])));
        assert!(!allowed(&node, &Call::Subscribe { queue: "q" }));
        assert!(!allowed(&node, &Call::ClusterStatus));
    }

    fn tokens() -> (TokenSet, String, String) {
        let admin = new_token().unwrap();
        let client = new_token().unwrap();
        let file = [
            TokenEntry {
                name: "ops".into(),
                role: Role::Admin,
                sha256: token_hash(&admin),
                prefixes: vec![],
                queues: vec![],
            },
            TokenEntry {
                name: "billing".into(),
                role: Role::Client,
                sha256: token_hash(&client).to_ascii_uppercase(),
                prefixes: vec!["billing/".into()],
                queues: vec![],
            },
        ]
        .iter()
        .map(TokenEntry::to_toml)
        .collect::<Vec<_>>()
        .join("\n");
        (TokenSet::parse(&file).unwrap(), admin, client)
    }

    fn policy(required: bool) -> Policy {
        Policy {
            required,
            members: [1, 2, 3].into(),
        }
    }

    fn bearer(header: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(Some(header)),
            certificate: None,
        }
    }

    #[test]
    fn tokens_authenticate_by_their_hash() {
        let (set, admin, client) = tokens();
        assert_eq!(set.len(), 2);
        assert!(
            admin.starts_with("hgt_") && admin.len() == 4 + 43,
            "{admin}"
        );
        assert_ne!(admin, client);

        let header = format!("Bearer {client}");
        match authenticate(bearer(&header), &set, &policy(true)).unwrap() {
            Caller::Identity(i) => {
                assert_eq!((i.name.as_str(), i.role), ("billing", Role::Client));
                assert_eq!(i.prefixes, ["billing/"]);
            }
            other => panic!("{other:?}"),
        }
        let header = format!("Bearer {admin}");
        assert!(matches!(
            authenticate(bearer(&header), &set, &policy(true)),
            Ok(Caller::Identity(i)) if i.role == Role::Admin
        ));
        // A wrong token is refused even where credentials are optional; so is a malformed
        // header, or one that is not text.
        for creds in [
            bearer("Bearer hgt_nope"),
            bearer(&admin),
            bearer("Bearer "),
            Credentials {
                authorization: Some(None),
                certificate: None,
            },
        ] {
            for required in [true, false] {
                let e = authenticate(creds, &set, &policy(required)).unwrap_err();
                assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
                assert!(!e.to_string().contains(&admin), "the secret leaks: {e}");
            }
        }
    }

    #[test]
    fn no_credentials_is_unauthenticated_only_where_they_are_required() {
        let set = TokenSet::default();
        let none = Credentials::default();
        assert!(matches!(
            authenticate(none, &set, &policy(true)),
            Err(Error::Unauthenticated(_))
        ));
        assert_eq!(
            authenticate(none, &set, &policy(false)).unwrap(),
            Caller::Open
        );
    }

    /// A certificate of a new CA (authentication trusts the TLS handshake to have checked it).
    fn issue(names: Vec<String>, cn: &str, ou: Option<&str>) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(ou) = ou {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, ou);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, &ca, &ca_key).unwrap().der().to_vec()
    }

    fn by_certificate(der: &[u8], tokens: &TokenSet) -> Result<Caller, Error> {
        authenticate(
            Credentials {
                authorization: None,
                certificate: Some(der),
            },
            tokens,
            &policy(true),
        )
    }

    #[test]
    fn certificates_name_an_identity_or_a_member_node() {
        let auth = |der: &[u8]| by_certificate(der, &TokenSet::default());
        match auth(&issue(Vec::new(), "carol", Some("worker"))).unwrap() {
            Caller::Identity(i) => {
                assert_eq!((i.name.as_str(), i.role), ("carol", Role::Worker));
                assert!(i.queues.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            auth(&issue(vec!["node-2".into()], "node-2", None)).unwrap(),
            Caller::Node(2)
        );
        // A node outside the cluster, or a certificate without a role, is no one we know.
        for der in [
            issue(vec!["node-9".into()], "node-9", None),
            issue(Vec::new(), "dave", Some("root")),
        ] {
            assert!(matches!(auth(&der), Err(Error::PermissionDenied(_))));
        }
    }

    #[test]
    fn certificates_take_the_limits_of_their_entry() {
        let file = [
            CertificateEntry {
                name: "app".into(),
                role: Some(Role::Client),
                prefixes: vec!["a-".into()],
                queues: vec![],
            },
            CertificateEntry {
                name: "mailer".into(),
                role: None,
                prefixes: vec![],
                queues: vec!["q1".into()],
            },
            CertificateEntry {
                name: "ops".into(),
                role: Some(Role::Admin),
                prefixes: vec![],
                queues: vec![],
            },
        ]
        .iter()
        .map(CertificateEntry::to_toml)
        .collect::<Vec<_>>()
        .join("\n");
        let set = TokenSet::parse(&file).unwrap();
        assert_eq!((set.len(), set.certificate_count()), (0, 3));
        let identity =
            |cn: &str, ou: &str| match by_certificate(&issue(Vec::new(), cn, Some(ou)), &set) {
                Ok(Caller::Identity(i)) => Ok(i),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            };

        let app = identity("app", "client").unwrap();
        assert_eq!(
            (app.role, app.prefixes.as_slice()),
            (Role::Client, &["a-".to_owned()][..])
        );
        let app = Caller::Identity(app);
        assert!(allowed(&app, &timers("Schedule", &["a-1"])));
        assert!(!allowed(&app, &timers("Schedule", &["b-1"])));
        let mailer = Caller::Identity(identity("mailer", "worker").unwrap());
        assert!(allowed(&mailer, &Call::Subscribe { queue: "q1" }));
        assert!(!allowed(&mailer, &Call::Subscribe { queue: "q2" }));
        assert!(identity("ops", "admin").is_ok());
        // Without an entry, a certificate holds its whole role.
        let other = identity("other", "client").unwrap();
        assert!(other.prefixes.is_empty() && other.queues.is_empty());

        // The file limits a certificate's role, never changes it: a role named, or implied by
        // queues, that is not the certificate's refuses it.
        for (cn, ou, wanted) in [
            ("app", "admin", "client"),
            ("mailer", "client", "worker"),
            ("ops", "worker", "admin"),
        ] {
            let e = identity(cn, ou).unwrap_err();
            assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
            let message = e.to_string();
            assert!(
                message.contains(&format!("has role {ou}"))
                    && message.contains(&format!("for role {wanted}")),
                "{message}"
            );
        }
    }

    #[test]
    fn subject_names_are_read_without_trusting_lengths() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } }
        let subject = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b',
        ];
        assert_eq!(subject_attribute(&subject, OID_COMMON_NAME), Some("ab"));
        assert_eq!(subject_attribute(&subject, OID_ORGANIZATIONAL_UNIT), None);
        // Every truncation, and lengths past the end or of more than 4 bytes, read as nothing.
        for end in 0..subject.len() {
            assert_eq!(subject_attribute(&subject[..end], OID_COMMON_NAME), None);
        }
        assert_eq!(der_element(&[0x30, 0x05, 0x00]), None);
        assert_eq!(der_element(&[0x30, 0x85, 0, 0, 0, 0, 1, 0]), None);
        assert_eq!(
            der_element(&[0x30, 0x81, 0x01, 0x07, 0x09]),
            Some((0x30, &[0x07][..], &[0x09][..]))
        );
    }

    #[test]
    fn the_tokens_file_is_checked_whole() {
        let hash = token_hash("t");
        let entry = |extra: &str| {
            format!("[[token]]\nname = \"x\"\nrole = \"client\"\nsha256 = \"{hash}\"\n{extra}")
        };
        assert_eq!(TokenSet::parse("").unwrap().len(), 0);
        assert_eq!(TokenSet::parse(&entry("")).unwrap().len(), 1);
        let bad = [
            (entry("color = \"red\""), "color"),
            (
                entry("queues = [\"q\"]"),
                "only the worker role takes queues",
            ),
            (entry("prefixes = [\"\"]"), "empty prefix"),
            (format!("{}\n{}", entry(""), entry("")), "listed twice"),
            (entry("").replace(&hash, "abc"), "64 hexadecimal digits"),
            (entry("").replace("client", "root"), "root"),
        ];
        for (text, expected) in bad {
            let e = TokenSet::parse(&text).unwrap_err();
            assert!(e.contains(expected), "{expected}: {e}");
        }
        let worker_with_prefix = entry("prefixes = [\"a/\"]").replace("client", "worker");
        assert!(TokenSet::parse(&worker_with_prefix)
            .unwrap_err()
            .contains("only the client role takes prefixes"));
    }

    #[test]
    fn revoked_certificates_are_refused_whatever_comes_with_them() {
        let der = issue(Vec::new(), "laptop", Some("admin"));
        let other = issue(Vec::new(), "desk", Some("admin"));
        let pem = |der: &[u8]| {
            use base64::Engine as _;
            let body = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        };
        let entry = revocation_entry(pem(&der).as_bytes()).unwrap();
        assert_eq!(entry.note.as_deref(), Some("CN=laptop"));
        assert!(revocation_entry(b"not a certificate").is_err());
        let (tokens, admin, _) = tokens();
        let file = format!(
            "{}\n{}",
            TokenEntry {
                name: "ops".into(),
                role: Role::Admin,
                sha256: token_hash(&admin),
                prefixes: vec![],
                queues: vec![],
            }
            .to_toml(),
            RevokedEntry {
                sha256: entry.sha256.to_ascii_uppercase(),
                ..entry
            }
            .to_toml()
        );
        let revoking = TokenSet::parse(&file).unwrap();
        assert_eq!(revoking.revoked_count(), 1);
        let refused = |r: Result<Caller, Error>| matches!(r, Err(Error::Unauthenticated(m)) if m.contains("revoked"));
        assert!(refused(by_certificate(&der, &revoking)));
        assert!(by_certificate(&der, &tokens).is_ok());
        assert!(by_certificate(&other, &revoking).is_ok());
        // A good token does not launder a revoked certificate.
        let header = format!("Bearer {admin}");
        let with_token = |der: &[u8]| {
            authenticate(
                Credentials {
                    authorization: Some(Some(&header)),
                    certificate: Some(der),
                },
                &revoking,
                &policy(true),
            )
        };
        assert!(refused(with_token(&der)));
        assert!(with_token(&other).is_ok());
        let e = TokenSet::parse("[[revoked]]\nsha256 = \"abc\"\n").unwrap_err();
        assert!(e.contains("revoked 1: sha256 must be 64"), "{e}");
        assert!(TokenSet::parse("[[revoked]]\nsha256 = \"\"\nwhy = \"x\"\n").is_err());
    }

    #[test]
    fn certificate_entries_are_checked_like_tokens() {
        let entry = |extra: &str| format!("[[certificate]]\nname = \"x\"\n{extra}");
        for ok in [
            "",
            "role = \"admin\"",
            "prefixes = [\"a-\"]",
            "role = \"worker\"\nqueues = [\"q\"]",
        ] {
            assert_eq!(
                TokenSet::parse(&entry(ok)).unwrap().certificate_count(),
                1,
                "{ok}"
            );
        }
        let bad = [
            (entry("sha256 = \"ab\""), "sha256"),
            (entry("role = \"root\""), "root"),
            (
                entry("role = \"worker\"\nprefixes = [\"a-\"]"),
                "only the client role takes prefixes",
            ),
            (
                entry("role = \"admin\"\nqueues = [\"q\"]"),
                "only the worker role takes queues",
            ),
            (entry("prefixes = [\"a-\"]\nqueues = [\"q\"]"), "not both"),
            (entry("prefixes = [\"\"]"), "empty prefix"),
            (entry("").replace("\"x\"", "\" \""), "name is empty"),
            (
                format!("{}\n{}", entry(""), entry("role = \"client\"")),
                "listed twice",
            ),
        ];
        for (text, expected) in bad {
            let e = TokenSet::parse(&text).unwrap_err();
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }
}
