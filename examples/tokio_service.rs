//! An axum HTTP service that offloads CPU-heavy requests to one shared
//! `ProcessPoolExecutor`, so that the tokio runtime stays free to answer everything else.
//!
//! ```text
//! cargo run --release --example tokio_service -- [--addr 127.0.0.1:3000] [--workers <cpus>] [--max-in-flight <2 x workers>]
//! curl 'http://127.0.0.1:3000/primes?below=5000000'   # {"below":5000000,"count":348513}
//! curl  http://127.0.0.1:3000/health                  # ok
//! curl  http://127.0.0.1:3000/stats                   # the pool's stats() and the service's counters, as JSON
//! ```
//!
//! - `GET /primes?below=N` counts the primes below `N` (at most `--max-below`) in one job
//!   on the pool.
//! - At most `--max-in-flight` such jobs run or wait at once; one more request gets
//!   `503 Service Unavailable` with `Retry-After: 1` at once, instead of queueing without
//!   bound.
//! - A client that disconnects cancels its job: the handler's future is dropped, and with
//!   it the guard that cancels the job (its worker is stopped and replaced).
//! - On Ctrl-C or SIGTERM the service stops accepting connections, lets the requests in
//!   progress finish, drains the pool and exits 0.
//!
//! `tests/http_service.rs` runs this binary and checks all of it over real HTTP.

#[path = "support/mod.rs"]
mod support;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use procpool::{Executor, ExecutorExt, JobHandle, PoolStats, ProcessPoolExecutor};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::Semaphore;

/// The CPU-heavy work, one job per request: trial division, as in `examples/primes.rs`.
fn count_primes_below(below: u64) -> u64 {
    let is_prime = |n: u64| {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    };
    (0..below).filter(|&n| is_prime(n)).count() as u64
}

/// What the handlers share.
struct App {
    pool: ProcessPoolExecutor,
    /// One permit per request allowed to run or wait on the pool.
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    max_below: u64,
    served: AtomicU64,
    rejected: AtomicU64,
}

#[derive(Deserialize)]
struct PrimesQuery {
    below: u64,
}

#[derive(Serialize)]
struct PrimesAnswer {
    below: u64,
    count: u64,
}

#[derive(Serialize)]
struct Stats {
    pool: PoolStats,
    requests_in_flight: usize,
    max_in_flight: usize,
    served: u64,
    rejected: u64,
}

/// Cancels the job if the request goes away before its result (the client disconnected,
/// or the server is dropping the connection).
struct CancelOnDrop<R: 'static>(JobHandle<R>);

impl<R: 'static> Drop for CancelOnDrop<R> {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.cancel();
        }
    }
}

async fn primes(State(app): State<Arc<App>>, Query(query): Query<PrimesQuery>) -> Response {
    if query.below > app.max_below {
        let message = format!("below must be at most {}\n", app.max_below);
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let Ok(_permit) = app.permits.clone().try_acquire_owned() else {
        app.rejected.fetch_add(1, Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: too many requests in progress, retry later\n",
        )
            .into_response();
    };
    let mut job = CancelOnDrop(app.pool.submit(count_primes_below, query.below));
    match (&mut job.0).await {
        Ok(count) => {
            app.served.fetch_add(1, Relaxed);
            Json(PrimesAnswer {
                below: query.below,
                count,
            })
            .into_response()
        }
        Err(error) => {
            let status = if error.is_shutdown() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, format!("{error}\n")).into_response()
        }
    }
}

async fn health() -> &'static str {
    "ok\n"
}

async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    Json(Stats {
        pool: app.pool.stats(),
        requests_in_flight: app.max_in_flight - app.permits.available_permits(),
        max_in_flight: app.max_in_flight,
        served: app.served.load(Relaxed),
        rejected: app.rejected.load(Relaxed),
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("signal received: no new connections; finishing the requests in progress");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut flags = support::Flags::parse(
        "tokio_service [--addr HOST:PORT] [--workers W] [--max-in-flight M] [--max-below N]",
    )?;
    let addr: SocketAddr = flags.get("addr", "127.0.0.1:3000".parse()?)?;
    let workers: usize = flags.get("workers", support::cpus())?;
    let max_in_flight: usize = flags.get("max-in-flight", 2 * workers)?;
    let max_below: u64 = flags.get("max-below", 50_000_000)?;
    flags.finish()?;

    let app = Arc::new(App {
        pool: ProcessPoolExecutor::builder()
            .max_workers(workers)
            .build()?,
        permits: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
        max_below,
        served: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/primes", get(primes))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(app.clone());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The line tests and scripts read the port from (with --addr 127.0.0.1:0).
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    app.pool.shutdown().await; // waits for anything still queued or running
    println!(
        "drained: {} requests served, {} rejected; exiting",
        app.served.load(Relaxed),
        app.rejected.load(Relaxed)
    );
    Ok(())
}
