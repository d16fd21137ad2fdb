//! Authentication on the client port, the tonic side of [`crate::auth`]: an interceptor on
//! Timers, Workers and Admin (not health or reflection, which stay open for probes and tools)
//! authenticates each call and leaves its [`Caller`] in the request's extensions; each handler
//! then authorizes what the call touches with [`check`]. The tokens file is reread when its
//! modification time or size changes ([`ClientAuth::reload_if_changed`], polled by the node).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{debug, error, info};

use crate::auth::{self, Call, Caller, Credentials, Policy, TokenSet};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, PERMISSION_DENIED, UNAUTHENTICATED};

/// How often the tokens file is checked for changes.
pub const TOKENS_FILE_POLL: Duration = Duration::from_secs(2);

/// What a change of the tokens file is noticed by.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_tokens(path: &Path) -> Result<TokenSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    TokenSet::parse(&text)
}

struct Inner {
    /// Off without TLS: there is nothing to carry credentials safely, every caller is open.
    enabled: bool,
    policy: Policy,
    tokens_file: Option<PathBuf>,
    tokens: RwLock<Arc<TokenSet>>,
    /// The tokens file as it was last read (or failed to be).
    last: Mutex<Stamp>,
    metrics: Arc<Metrics>,
}

/// The client port's authenticator; clones share the tokens.
#[derive(Clone)]
pub struct ClientAuth(Arc<Inner>);

impl ClientAuth {
    /// Reads the tokens file, if any: a node does not start with one it cannot read.
    pub fn new(config: &NodeConfig, metrics: Arc<Metrics>) -> Result<ClientAuth> {
        let tokens_file = config.auth.tokens_file.clone();
        let (tokens, last) = match &tokens_file {
            Some(path) => {
                let last = stamp(path);
                let tokens = read_tokens(path).map_err(|e| {
                    Error::Config(format!("auth.tokens_file {}: {e}", path.display()))
                })?;
                (tokens, last)
            }
            None => (TokenSet::default(), None),
        };
        Ok(ClientAuth(Arc::new(Inner {
            enabled: config.tls.is_enabled(),
            policy: Policy {
                required: config.auth.required,
                members: config.node_ids(),
            },
            tokens_file,
            tokens: RwLock::new(Arc::new(tokens)),
            last: Mutex::new(last),
            metrics,
        })))
    }

    pub fn is_required(&self) -> bool {
        self.0.enabled && self.0.policy.required
    }

    pub fn tokens_file(&self) -> Option<&Path> {
        self.0.tokens_file.as_deref()
    }

    /// How many tokens are accepted now.
    pub fn token_count(&self) -> usize {
        self.tokens().len()
    }

    fn tokens(&self) -> Arc<TokenSet> {
        Arc::clone(&self.0.tokens.read().expect("tokens lock poisoned"))
    }

    /// Rereads the tokens file if it changed. One that does not read or parse leaves the
    /// tokens as they were, so a half-written or mistyped file locks no one out; the error
    /// is logged once per change.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.0.tokens_file else {
            return;
        };
        let now = stamp(path);
        {
            let mut last = self.0.last.lock().expect("stamp lock poisoned");
            if *last == now {
                return;
            }
            *last = now;
        }
        match read_tokens(path) {
            Ok(tokens) => {
                info!(
                    file = %path.display(),
                    tokens = tokens.len(),
                    certificates = tokens.certificate_count(),
                    revoked = tokens.revoked_count(),
                    "tokens file reloaded"
                );
                *self.0.tokens.write().expect("tokens lock poisoned") = Arc::new(tokens);
            }
            Err(e) => {
                self.0.metrics.tokens_file_reload_failures.inc();
                error!(file = %path.display(), error = %e, "tokens file not reloaded: the tokens read before stay in force");
            }
        }
    }

    fn authenticate(&self, request: &Request<()>) -> Result<Caller> {
        if !self.0.enabled {
            return Ok(Caller::Open);
        }
        let certs = request.peer_certs();
        let credentials = Credentials {
            authorization: request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            // The first certificate is the caller's own; the rest is its chain.
            certificate: certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref()),
        };
        auth::authenticate(credentials, &self.tokens(), &self.0.policy)
    }
}

fn refused(metrics: &Metrics, e: &Error) {
    let reason = match e {
        Error::PermissionDenied(_) => PERMISSION_DENIED,
        _ => UNAUTHENTICATED,
    };
    metrics
        .client_calls_refused
        .with_label_values(&[reason])
        .inc();
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.authenticate(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(e) => {
                refused(&self.0.metrics, &e);
                // Not a warning: whoever can reach the port could flood the log. The message
                // never holds the token.
                debug!(remote = ?request.remote_addr(), error = %e, "client call refused");
                Err(e.into())
            }
        }
    }
}

/// The caller [`ClientAuth`] authenticated. A request it did not see has none: refused, so
/// a service served without the interceptor fails closed.
pub fn caller<T>(request: &Request<T>) -> Result<Caller> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Internal("the call was not authenticated".into()))
}

/// Whether `caller` may make `call`; a refusal is counted and logged (without secrets).
pub fn check(caller: &Caller, call: &Call, metrics: &Metrics) -> Result<()> {
    auth::authorize(caller, call).inspect_err(|e| {
        refused(metrics, e);
        debug!(error = %e, "client call refused");
    })
}
