//! TLS and node identity.
//!
//! Every certificate comes from one cluster CA (`hourglass cert`). A node's certificate names
//! the node by a SAN DNS name `node-<id>`, checked both ways: a node dialing node `<id>`
//! accepts only a server certificate valid for that name (so it talks to the node it meant,
//! wherever that node is reached), and the peer port admits a Raft transport call only from
//! a client certificate valid for the name of a configured peer. The CA alone is not enough
//! to reach the transport: a client certificate of the same CA (`hourglass cert client`), or
//! a node certificate of an id outside the configured peers, is refused.

use std::collections::BTreeSet;
use std::path::Path;

use hourglass_types::NodeId;
use prometheus::IntCounter;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::debug;
use webpki::EndEntityCert;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// The SAN DNS name naming node `id` in its certificate.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// The node's certificates, read once at start.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {key} {}: {e}", path.display())))
}

impl Tls {
    /// The certificates `config` names, or `None` when TLS is off.
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>> {
        let (Some(ca), Some(cert), Some(key)) = (&config.ca, &config.cert, &config.key) else {
            return Ok(None);
        };
        Ok(Some(Tls {
            ca: Certificate::from_pem(read("tls.ca", ca)?),
            identity: Identity::from_pem(read("tls.cert", cert)?, read("tls.key", key)?),
        }))
    }

    /// The peer port: only clients with a certificate of the cluster CA get through the
    /// handshake; [`PeerAuth`] then checks that it names a member node.
    pub fn peer_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The client port: a client certificate is verified when presented, not required (the
    /// client may hold none).
    pub fn client_server(&self) -> ServerTlsConfig {
        self.peer_server().client_auth_optional(true)
    }

    /// Dialing node `id` (its peer port, or its client port to forward a call): present this
    /// node's certificate and accept only node `id`'s.
    pub fn dial(&self, id: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_name(id))
    }
}

/// The first of `members` a certificate (DER, already verified against the CA) is valid for.
pub(crate) fn member_named(der: &[u8], members: &BTreeSet<NodeId>) -> Option<NodeId> {
    let der = CertificateDer::from(der);
    let cert = EndEntityCert::try_from(&der).ok()?;
    members.iter().copied().find(|&id| {
        ServerName::try_from(node_name(id))
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// Admits a Raft transport call only from a member node: its TLS client certificate (already
/// verified against the cluster CA by the handshake) must be valid for the name of a node of
/// `peers`. Without
/// TLS there is no identity to check and every call passes (plaintext mode, development only).
#[derive(Clone)]
pub struct PeerAuth {
    pub tls: bool,
    pub members: BTreeSet<NodeId>,
    pub refused: IntCounter,
}

impl PeerAuth {
    fn check(&self, request: &Request<()>) -> Result<()> {
        if !self.tls {
            return Ok(());
        }
        let certs = request.peer_certs().ok_or_else(|| {
            Error::Unauthenticated(
                "the peer port takes only callers with a node certificate".into(),
            )
        })?;
        // The first certificate is the caller's own; the rest is its chain.
        match certs
            .first()
            .and_then(|c| member_named(c.as_ref(), &self.members))
        {
            Some(_) => Ok(()),
            None => Err(Error::PermissionDenied(format!(
                "the caller's certificate names no member node (node-<id> for an id of {:?})",
                self.members
            ))),
        }
    }
}

impl Interceptor for PeerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&request) {
            Ok(()) => Ok(request),
            Err(e) => {
                self.refused.inc();
                // Not a warning: whoever can reach the port could flood the log. The metric
                // `hourglass_peer_calls_refused_total` is what to alert on.
                debug!(remote = ?request.remote_addr(), error = %e, "raft transport call refused");
                Err(e.into())
            }
        }
    }
}
