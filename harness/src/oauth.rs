//! A token introspection endpoint (RFC 7662) for Dovecot's `oauth2` passdb,
//! controlled by the test: it issues tokens for a user, expires or revokes
//! them, and counts how often
//! Dovecot asked about each, so a test can tell a retry loop from one retry.
//!
//! Dovecot POSTs `token=…` (`introspection_mode = post`) or sends it as a
//! bearer header (`auth`); the answer is
//! `{"active":true,"username":…}` for a live token, `{"active":false}` else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::error::{io_err, Result};

/// What the endpoint knows of one token.
#[derive(Debug, Clone)]
struct Grant {
    /// The user it belongs to.
    user: String,
    /// Introspections it still answers as active; `None`: no limit.
    uses_left: Option<u64>,
}

#[derive(Debug, Default)]
struct Registry {
    grants: HashMap<String, Grant>,
    /// Introspection requests per token (unknown tokens too).
    asked: HashMap<String, u64>,
}

/// A running introspection endpoint on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct OAuthServer {
    address: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OAuthServer {
    /// Binds a free loopback port and serves on a thread of its own.
    pub fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_err("binding", std::path::Path::new("127.0.0.1:0")))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configuring", std::path::Path::new("127.0.0.1:0")))?;
        let address = listener
            .local_addr()
            .map_err(io_err("reading", std::path::Path::new("127.0.0.1:0")))?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&registry);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting a runtime for", std::path::Path::new("oauth endpoint")))?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stop => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let registry = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let registry = Arc::clone(&registry);
                            async move { Ok::<_, Infallible>(answer(&registry, request).await) }
                        });
                        // A client that hangs up mid-request is its own business.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Ok(Self {
            address,
            registry,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The URL Dovecot's `introspection_url` points at.
    pub fn introspection_url(&self) -> String {
        format!("http://{}/introspect", self.address)
    }

    /// Makes `token` valid for `user` until expired or revoked.
    pub fn issue(&self, user: &str, token: &str) {
        self.lock().grants.insert(
            token.to_string(),
            Grant {
                user: user.to_string(),
                uses_left: None,
            },
        );
    }

    /// `token` is answered active `uses` more times, then as expired.
    pub fn expire_after(&self, token: &str, uses: u64) {
        if let Some(grant) = self.lock().grants.get_mut(token) {
            grant.uses_left = Some(uses);
        }
    }

    /// `token` is answered as inactive from now on.
    pub fn revoke(&self, token: &str) {
        self.expire_after(token, 0);
    }

    /// How often Dovecot asked about `token`.
    pub fn introspections(&self, token: &str) -> u64 {
        self.lock().asked.get(token).copied().unwrap_or(0)
    }

    /// How often Dovecot asked about any token.
    pub fn total_introspections(&self) -> u64 {
        self.lock().asked.values().sum()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // A panicking test thread leaves the counts readable.
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The token of an introspection request: the form field `token` of a
/// POST, else an `Authorization: Bearer` header.
async fn token_of(request: Request<Incoming>) -> Option<String> {
    let bearer = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = request.into_body().collect().await.ok()?.to_bytes();
    url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
        .or(bearer)
}

async fn answer(registry: &Mutex<Registry>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match token_of(request).await {
        None => serde_json::json!({"active": false}),
        Some(token) => {
            let mut registry = lock(registry);
            *registry.asked.entry(token.clone()).or_insert(0) += 1;
            match registry.grants.get_mut(&token) {
                Some(grant) if grant.uses_left != Some(0) => {
                    if let Some(left) = grant.uses_left.as_mut() {
                        *left -= 1;
                    }
                    serde_json::json!({"active": true, "username": grant.user})
                }
                _ => serde_json::json!({"active": false}),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
