//! The listener of `coffer run` (`[service] listen`): `/metrics` (Prometheus), `/healthz`
//! (liveness), `/api/status` (the JSON of `coffer status` plus the jobs and their next
//! runs) and `/`, the status page. Everything is rendered from the service's state: no
//! request reads the repository.
//!
//! With `basic_auth_file` (one line, `user:password`), every path but `/healthz` asks for
//! HTTP basic authentication; the password is compared in constant time. The server runs
//! on a small tokio runtime of its own thread, and stops with the service.

use super::daemon::{JobState, ServiceState};
use crate::error::Error;
use crate::ops::status::StatusReport;
use crate::progress::Progress;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The running listener; dropping it stops the server.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct App {
    state: Arc<Mutex<ServiceState>>,
    /// The whole `Basic …` header value that is accepted.
    auth: Option<String>,
}

/// `GET /api/status`: `coffer status --json`, plus the scheduler's jobs.
#[derive(Serialize)]
pub struct ApiStatus {
    #[serde(flatten)]
    pub status: StatusReport,
    /// Each scheduled job: its next run, whether it runs now, its last run and counters.
    pub jobs: Vec<JobState>,
    pub service_started: Option<chrono::DateTime<chrono::Utc>>,
}

/// Read `user:password` from a basic-auth file.
fn read_auth(path: &Path, log: &Progress) -> Result<String> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading [service] basic_auth_file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if !line.contains(':') || line.starts_with(':') || line.ends_with(':') {
        return Err(Error::usage(format!(
            "[service] basic_auth_file {} must hold one line, user:password",
            path.display()
        ))
        .into());
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                log.warn(&format!(
                    "[service] basic_auth_file {} can be read by other users: chmod 600 it",
                    path.display()
                ));
            }
        }
    }
    Ok(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(line)
    ))
}

/// Bind `listen` and serve until the returned [`Server`] is dropped.
pub fn serve(
    listen: &str,
    basic_auth_file: Option<&Path>,
    state: Arc<Mutex<ServiceState>>,
    log: &Progress,
) -> Result<Server> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| {
            Error::usage(format!(
                "[service] listen = {listen:?}: {e}; write it as HOST:PORT, e.g. 127.0.0.1:9808"
            ))
        })?
        .next()
        .ok_or_else(|| Error::usage(format!("[service] listen = {listen:?} names no address")))?;
    let auth = match basic_auth_file {
        Some(p) => Some(read_auth(p, log)?),
        None => None,
    };
    if auth.is_none() && !addr.ip().is_loopback() {
        log.warn(&format!(
            "[service] listen = {listen:?} is not a loopback address and there is no \
             basic_auth_file: anyone who reaches the port sees the status of the backups"
        ));
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::usage(format!("[service] listen = {listen:?}: cannot listen: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let has_auth = auth.is_some();
    let app = Arc::new(App { state, auth });
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/status", get(api_status))
        .with_state(app);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let log2 = log.clone();
    let thread = std::thread::Builder::new()
        .name("coffer-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return log2.warn(&format!("the status listener failed: {e}")),
                };
                let served = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = stopped.await;
                });
                if let Err(e) = served.await {
                    log2.warn(&format!("the status listener failed: {e}"));
                }
            })
        })?;
    log.log(&format!(
        "status page, /metrics, /healthz and /api/status on http://{addr}/{}",
        if has_auth {
            " (basic authentication)"
        } else {
            ""
        }
    ));
    Ok(Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// `None` when the request may go on, else the 401 to send.
fn deny(app: &App, headers: &HeaderMap) -> Option<Response> {
    use subtle::ConstantTimeEq;
    let want = app.auth.as_deref()?;
    let got = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    if got.len() == want.len() && bool::from(got.ct_eq(want.as_bytes())) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"coffer\"")],
            "authentication required\n",
        )
            .into_response(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&app, &headers) {
        return r;
    }
    let text = super::metrics::render(&app.state.lock().unwrap());
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

async fn api_status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&app, &headers) {
        return r;
    }
    let body = {
        let s = app.state.lock().unwrap();
        let Some(config) = s.config.clone() else {
            return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
        };
        let status = s
            .overview
            .report(&config, chrono::Local::now().fixed_offset());
        serde_json::to_string_pretty(&ApiStatus {
            status,
            jobs: s.jobs.clone(),
            service_started: s.started,
        })
    };
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = deny(&app, &headers) {
        return r;
    }
    let html = super::page::render(&app.state.lock().unwrap(), chrono::Utc::now());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
