//! An axum HTTP service that offloads CPU-heavy requests to one shared
//! `ProcessPoolExecutor`, written as a production service would be: the pool's bounded
//! queue for admission, a `tower::Service` for the work, tower-http for tracing and
//! timeouts, health from the pool, and a drain deadline on shutdown.
//!
//! ```text
//! cargo run --release --example tokio_service -- [--addr 127.0.0.1:3000] [--workers <cpus>]
//!     [--max-queued <2 x workers>] [--admission-wait-ms 250] [--timeout-ms 30000]
//!     [--drain-timeout-ms 10000] [--max-below 50000000]
//! curl 'http://127.0.0.1:3000/primes?below=5000000'   # {"below":5000000,"count":348513}
//! curl  http://127.0.0.1:3000/health                  # ok (503 when the pool is broken)
//! curl  http://127.0.0.1:3000/stats                   # PoolStats (failures by kind, queue wait, run time), the service's counters
//! curl  http://127.0.0.1:3000/metrics                 # Prometheus text (built with --features metrics)
//! RUST_LOG=debug cargo run --example tokio_service    # the pool's own events and every request
//! ```
//!
//! - `GET /primes?below=N` counts the primes below `N` (at most `--max-below`) in one job
//!   on the pool, through [`PoolService`].
//! - **Admission is the pool's**: at most `workers + --max-queued` jobs run or wait. A
//!   request that finds the pool full waits up to `--admission-wait-ms` for room (so
//!   clients that retry at once do not eat the CPU with rejections), then gets `503` with
//!   `Retry-After: 1`.
//! - **`--timeout-ms` is the job's own time limit**: a job that runs longer has its worker
//!   killed and the request gets `504`. A request whose client disconnects drops its
//!   future, which cancels its job (`CancelOnDrop`).
//! - **A dead worker** (`kill -9` one) is retried once on a fresh worker, as counting
//!   primes may run twice; if it dies again the request gets `503` with `Retry-After`.
//!   Errors never expose internal text: the detail goes to the log.
//! - **`/health`** is the pool's [`Health`]: `200 ok` (or `200 restarting: ...`), `503`
//!   when it is broken or shut down. `--broken-workers 1` makes every worker's
//!   initializer fail, to see it.
//! - **Shutdown** on Ctrl-C or SIGTERM: no new connections, new requests get `503`, the
//!   requests in progress have `--drain-timeout-ms` to finish; then the jobs still
//!   running are killed (their requests get `503`) and the process exits 0.
//! - **`/metrics`** (when built with `--features metrics`): the pool's figures in
//!   Prometheus text format, through the `metrics` facade and
//!   `metrics-exporter-prometheus`, read from the pool at each scrape.
//! - **Logs** go through `tracing` (a `tracing-subscriber` on standard error, `RUST_LOG`
//!   to filter): each request (tower-http's `TraceLayer`) and the pool's own events (a
//!   worker died, the pool broke). Standard output carries two lines for scripts: the
//!   address it listens on, and the summary when it exits.
//!
//! `tests/http_service.rs` runs this binary and checks all of it over real HTTP.

#[path = "support/mod.rs"]
mod support;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use procpool::{
    Executor, Health, JobError, JobOptions, PoolService, PoolStats, ProcessPoolExecutor,
    ShutdownOptions,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tower::{Service, ServiceExt};
use tower_http::trace::TraceLayer;

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

/// `--broken-workers 1`: a worker initializer that fails, so that the pool breaks.
fn broken_initializer() {
    panic!("this worker was started with --broken-workers");
}

type Primes = PoolService<ProcessPoolExecutor, u64, u64>;

/// What the handlers share.
struct App {
    pool: ProcessPoolExecutor,
    primes: Primes,
    admission_wait: Duration,
    max_below: u64,
    served: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
    #[cfg(feature = "metrics")]
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
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
    health: String,
    served: u64,
    rejected: u64,
    timed_out: u64,
    failed: u64,
}

/// `503` with `Retry-After: 1`: the pool cannot take the request now.
fn unavailable(why: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        why,
    )
        .into_response()
}

async fn primes(State(app): State<Arc<App>>, Query(query): Query<PrimesQuery>) -> Response {
    if query.below > app.max_below {
        let message = format!("below must be at most {}\n", app.max_below);
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    // Room in the pool, waiting a little for it when the pool is full.
    let mut primes = app.primes.clone();
    let ready = tokio::time::timeout(app.admission_wait, primes.ready()).await;
    let ready = match ready {
        Ok(Ok(ready)) => ready,
        Ok(Err(_)) => return unavailable("shutting down: retry later\n"),
        Err(_) => {
            app.rejected.fetch_add(1, Relaxed);
            return unavailable("busy: too many requests in progress, retry later\n");
        }
    };
    // Dropping this future (a client that hangs up) cancels the job.
    match ready.call(query.below).await {
        Ok(count) => {
            app.served.fetch_add(1, Relaxed);
            Json(PrimesAnswer {
                below: query.below,
                count,
            })
            .into_response()
        }
        Err(error) => answer_error(&app, error),
    }
}

/// A failed job as an HTTP answer: what a client can act on, with the detail in the log.
fn answer_error(app: &App, error: JobError) -> Response {
    match error {
        JobError::TimedOut(limit) => {
            app.timed_out.fetch_add(1, Relaxed);
            tracing::warn!(
                ?limit,
                "a request ran past its time limit; its job was killed"
            );
            (
                StatusCode::GATEWAY_TIMEOUT,
                "the computation took too long\n",
            )
                .into_response()
        }
        JobError::ShutDown => unavailable("shutting down: retry later\n"),
        error if error.is_worker_died() || error.is_pool_broken() || error.is_queue_full() => {
            app.failed.fetch_add(1, Relaxed);
            tracing::warn!(%error, "a request's job could not finish");
            unavailable("the computation failed: retry later\n")
        }
        error => {
            app.failed.fetch_add(1, Relaxed);
            tracing::error!(%error, "a request's job failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.pool.health() {
        Health::Serving => "ok\n".into_response(),
        health @ Health::Restarting { .. } => format!("{health}\n").into_response(),
        health => (StatusCode::SERVICE_UNAVAILABLE, format!("{health}\n")).into_response(),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    Json(Stats {
        pool: app.pool.stats(),
        health: app.pool.health().to_string(),
        served: app.served.load(Relaxed),
        rejected: app.rejected.load(Relaxed),
        timed_out: app.timed_out.load(Relaxed),
        failed: app.failed.load(Relaxed),
    })
}

/// The pool's figures, as a Prometheus scrape reads them.
#[cfg(feature = "metrics")]
async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    app.pool.stats().record_metrics("primes");
    app.pool.health().record_metrics("primes");
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

struct Settings {
    addr: SocketAddr,
    workers: usize,
    max_queued: usize,
    admission_wait: Duration,
    timeout: Duration,
    drain_timeout: Duration,
    max_below: u64,
    broken_workers: bool,
}

fn settings() -> Result<Settings, Box<dyn std::error::Error>> {
    let mut flags = support::Flags::parse(
        "tokio_service [--addr HOST:PORT] [--workers W] [--max-queued Q] \
         [--admission-wait-ms MS] [--timeout-ms MS] [--drain-timeout-ms MS] [--max-below N] \
         [--broken-workers 0|1]",
    )?;
    let workers: usize = flags.get("workers", support::cpus())?;
    let settings = Settings {
        addr: flags.get("addr", "127.0.0.1:3000".parse()?)?,
        workers,
        max_queued: flags.get("max-queued", 2 * workers)?,
        admission_wait: Duration::from_millis(flags.get("admission-wait-ms", 250)?),
        timeout: Duration::from_millis(flags.get("timeout-ms", 30_000)?),
        drain_timeout: Duration::from_millis(flags.get("drain-timeout-ms", 10_000)?),
        max_below: flags.get("max-below", 50_000_000)?,
        broken_workers: flags.get::<u8>("broken-workers", 0)? != 0,
    };
    flags.finish()?;
    Ok(settings)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = settings()?;
    let mut builder = ProcessPoolExecutor::builder()
        .max_workers(settings.workers)
        .max_queued(settings.max_queued);
    if settings.broken_workers {
        builder = builder.initializer(broken_initializer);
    }
    let pool = builder.build()?;
    // The request's time limit is the job's own: a job that runs past it is killed. A pure
    // function may run again if its worker dies under it.
    let options = JobOptions::new().timeout(settings.timeout).retries(1);
    let app = Arc::new(App {
        primes: PoolService::new(pool.clone(), count_primes_below).with_options(options),
        pool: pool.clone(),
        admission_wait: settings.admission_wait,
        max_below: settings.max_below,
        served: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        #[cfg(feature = "metrics")]
        prometheus: metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?,
    });
    let router = Router::new()
        .route("/primes", get(primes))
        .route("/health", get(health))
        .route("/stats", get(stats));
    #[cfg(feature = "metrics")]
    let router = router.route("/metrics", get(metrics_text));
    let router = router
        .layer(TraceLayer::new_for_http())
        .with_state(app.clone());

    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    // The line tests and scripts read the port from (with --addr 127.0.0.1:0).
    println!("listening on http://{}", listener.local_addr()?);
    tracing::info!(
        workers = settings.workers,
        max_queued = settings.max_queued,
        "serving"
    );

    // On a signal: refuse new jobs, stop accepting connections, and give the requests in
    // progress the drain deadline; past it, kill what still runs.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let mut stop = stop_rx;
        let _ = stop.wait_for(|stop| *stop).await;
    });
    let drain = settings.drain_timeout;
    let signalled = pool.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(?drain, "signal received: draining");
        signalled.begin_shutdown(false);
        let _ = stop_tx.send(true);
        let in_time = signalled
            .shutdown_with(ShutdownOptions::new().timeout(drain))
            .await;
        if !in_time {
            tracing::warn!("the drain deadline passed: the jobs still running were killed");
        }
    });
    server.await?;
    pool.shutdown_with(ShutdownOptions::new().cancel_queued(true).timeout(drain))
        .await;
    println!(
        "drained: {} requests served, {} rejected, {} timed out, {} failed; exiting",
        app.served.load(Relaxed),
        app.rejected.load(Relaxed),
        app.timed_out.load(Relaxed),
        app.failed.load(Relaxed)
    );
    Ok(())
}
