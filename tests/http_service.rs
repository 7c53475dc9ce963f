//! Runs `examples/tokio_service.rs` as a real process on `127.0.0.1:0` and talks HTTP to it:
//! correct results, `/health` answering while CPU-heavy requests run, 503 with
//! `Retry-After` under overload, 504 when a request runs past its time limit (its job
//! killed), `/health` saying 503 when the pool is broken, and a graceful shutdown on
//! SIGTERM that drains and exits 0, cutting jobs that outlast the drain deadline.

mod common;

use common::bounded;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request heavy enough (seconds in a debug build, a fraction of one in release) to
/// still run while the test makes its other requests; and its answer.
const HEAVY_BELOW: u64 = 2_000_000;
const HEAVY_COUNT: u64 = 148_933;

/// The example's binary, built (if need be) with the profile and target directory of
/// this test.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/..
    let target_dir = profile_dir.parent().unwrap();
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build
        .args([
            "build",
            "--quiet",
            "--example",
            "tokio_service",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().unwrap() == "release" {
        build.arg("--release");
    }
    // The example as this test was built: with /metrics when the feature is on.
    if cfg!(feature = "metrics") {
        build.args(["--features", "metrics"]);
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building the example failed");
    profile_dir.join("examples").join("tokio_service")
}

/// The running service; killed if a test fails before shutting it down.
struct Service {
    child: Child,
    addr: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Service {
    fn start(args: &[&str]) -> Service {
        Service::start_with(Command::new(example_binary()), args)
    }

    /// Starts the service as a terminal runs a command: the leader of a process group of
    /// its own (`setsid`), with SIGINT at its default disposition (`env
    /// --default-signal`), since a test started from a script's background job inherits it
    /// ignored.
    fn start_as_a_terminal_would(args: &[&str]) -> Service {
        let mut command = Command::new("setsid");
        command
            .arg("env")
            .arg("--default-signal=INT")
            .arg(example_binary());
        Service::start_with(command, args)
    }

    fn start_with(mut command: Command, args: &[&str]) -> Service {
        let mut child = command
            .env("RUST_LOG", "warn") // its log on standard error, for a failing test
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the example");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Service {
            child,
            addr,
            stdout,
        }
    }

    async fn get(&self, path: &str) -> Response {
        get(&self.addr, path).await.expect("request failed")
    }

    /// Sends SIGTERM (with kill(1), to keep `unsafe` out of the tests).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "sending SIGTERM");
    }

    /// Sends SIGINT to the service's whole process group, as a terminal's Ctrl-C does
    /// (with kill(1)).
    fn interrupt_group(&self) {
        let status = Command::new("kill")
            .args(["-INT", "--", &format!("-{}", self.child.id())])
            .status()
            .expect("running kill");
        assert!(status.success(), "sending SIGINT to the group");
    }

    /// Waits for the process to exit, with a bound; returns its status and the rest of
    /// its standard output.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + common::BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut rest = String::new();
                std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
                return (status, rest);
            }
            assert!(Instant::now() < deadline, "the service did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 GET over a fresh connection (`Connection: close`); an `UnexpectedEof`
/// error when the server closes the connection before a complete response.
async fn get(addr: &str, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    // A server that is shutting down may accept a connection and close it unanswered:
    // that is an error of this request, for the caller to judge, not a test failure.
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the connection closed before a complete response: {text:?}"),
        ));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Polls `/stats` until `ready` holds for it, and returns those stats.
async fn stats_when(
    service: &Service,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    bounded(what, async {
        loop {
            let stats = service.get("/stats").await.json();
            if ready(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Waits until `n` jobs run.
async fn until_in_flight(service: &Service, n: u64) {
    stats_when(service, "requests to start", |stats| {
        stats["pool"]["jobs_running"] == n
    })
    .await;
}

#[tokio::test]
async fn answers_primes_health_and_stats_correctly() {
    let service = Service::start(&[
        "--workers",
        "2",
        "--max-queued",
        "14",
        "--max-below",
        "10000000",
    ]);
    let answer = service.get("/primes?below=100000").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["count"], 9592);
    let many: Vec<_> = (0..16_u64)
        .map(|i| {
            let addr = service.addr.clone();
            tokio::spawn(async move { get(&addr, &format!("/primes?below={}", 1000 * i)).await })
        })
        .collect();
    let expected = [
        0, 168, 303, 430, 550, 669, 783, 900, 1007, 1117, 1229, 1335, 1438, 1547, 1652, 1754,
    ];
    for (i, task) in many.into_iter().enumerate() {
        let answer = bounded("a request", task).await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["count"], expected[i], "below {}", 1000 * i);
    }
    let bad = service.get("/primes?below=20000000").await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(service.get("/primes?below=x").await.status, 400);
    let health = service.get("/health").await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    let stats = service.get("/stats").await.json();
    assert_eq!(stats["pool"]["max_workers"], 2);
    assert_eq!(stats["pool"]["max_queued"], 14);
    assert_eq!(stats["health"], "serving");
    assert_eq!(stats["pool"]["run_time"]["count"], 17, "{stats}");
    assert_eq!(stats["served"], 17, "{stats}");
    assert_eq!(stats["pool"]["jobs_completed"], 17, "{stats}");
    service.terminate();
    let (status, _) = service.wait();
    assert!(status.success(), "{status:?}");
}

/// Two workers, no job waiting beyond them, and no wait for room: a third request is
/// turned away at once. The drain deadline is far (heavy requests take seconds in a
/// debug build): these tests check that a drain lets requests finish.
const NO_QUEUE: [&str; 8] = [
    "--workers",
    "2",
    "--max-queued",
    "0",
    "--admission-wait-ms",
    "0",
    "--drain-timeout-ms",
    "120000",
];

/// Awaits the heavy requests: each answered in full.
async fn both_answered(heavy: Vec<tokio::task::JoinHandle<std::io::Result<Response>>>) {
    for task in heavy {
        let answer = bounded("a heavy request", task).await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["count"], HEAVY_COUNT);
    }
}

/// Sends two CPU-heavy requests and waits until the service runs both.
async fn two_heavy_requests(
    service: &Service,
) -> Vec<tokio::task::JoinHandle<std::io::Result<Response>>> {
    let heavy = (0..2)
        .map(|_| {
            let addr = service.addr.clone();
            tokio::spawn(async move { get(&addr, &format!("/primes?below={HEAVY_BELOW}")).await })
        })
        .collect();
    until_in_flight(service, 2).await;
    heavy
}

#[tokio::test]
async fn stays_responsive_rejects_overload_and_drains_on_sigterm() {
    let service = Service::start(&NO_QUEUE);
    let heavy = two_heavy_requests(&service).await;

    // /health answers while both workers are busy with CPU-heavy requests.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let start = Instant::now();
        let health = service.get("/health").await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(health.status, 200);
    }
    // Overload: both workers are busy and nothing may wait, so every further heavy
    // request is turned away at once.
    for _ in 0..6 {
        let busy = service.get(&format!("/primes?below={HEAVY_BELOW}")).await;
        assert_eq!(busy.status, 503, "{busy:?}");
        assert_eq!(busy.header("retry-after"), Some("1"), "{busy:?}");
    }
    let stats = service.get("/stats").await.json();
    assert_eq!(stats["rejected"], 6, "{stats}");
    assert!(
        heavy.iter().all(|task| !task.is_finished()) && stats["pool"]["jobs_running"] == 2,
        "the heavy requests must still run after the /health and 503 answers \
         (or this test proves nothing): {stats}"
    );
    println!("slowest /health while both workers were busy: {slowest:?}");

    // SIGTERM: no new connections, the two requests in progress finish, exit 0.
    service.terminate();
    bounded("the listener to close", async {
        while get(&service.addr, "/health").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    both_answered(heavy).await;
    let (status, output) = service.wait();
    assert!(status.success(), "{status:?}: {output}");
    assert!(
        output.contains("drained: 2 requests served, 6 rejected"),
        "{output}"
    );
}

// Regression: the pool's workers were in the service's process group, so a terminal's
// Ctrl-C killed them with it: the request in flight got "500 worker process died ...
// (SIGINT)" and the service reported "drained: 0 requests served".
#[tokio::test]
async fn ctrl_c_leaves_the_jobs_to_the_service_which_drains() {
    let service = Service::start_as_a_terminal_would(&NO_QUEUE);
    let heavy = two_heavy_requests(&service).await;
    service.interrupt_group();
    both_answered(heavy).await;
    let (status, output) = service.wait();
    assert!(status.success(), "{status:?}: {output}");
    assert!(output.contains("drained: 2 requests served"), "{output}");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_job() {
    let service = Service::start(&["--workers", "2"]);
    let mut stream = TcpStream::connect(&service.addr).await.unwrap();
    let request = format!("GET /primes?below={HEAVY_BELOW} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    until_in_flight(&service, 1).await;
    drop(stream);
    let stats = stats_when(&service, "the job to be cancelled", |stats| {
        stats["pool"]["jobs_running"] == 0
    })
    .await;
    assert_eq!(
        stats["pool"]["jobs_completed"], 0,
        "the job ran to its end: {stats}"
    );
    assert_eq!(stats["pool"]["jobs_failed"], 1, "{stats}");
    assert_eq!(stats["pool"]["failures"]["cancelled"], 1, "{stats}");
    service.terminate();
    assert!(service.wait().0.success());
}

/// A request that runs for minutes even in a release build.
const ENDLESS_BELOW: &str = "/primes?below=50000000";

#[tokio::test]
async fn a_request_past_its_time_limit_gets_504_and_its_job_is_killed() {
    let service = Service::start(&["--workers", "1", "--timeout-ms", "300"]);
    let answer = bounded("a request past its limit", service.get(ENDLESS_BELOW)).await;
    assert_eq!(answer.status, 504, "{answer:?}");
    let stats = stats_when(&service, "the worker to be replaced", |stats| {
        stats["pool"]["respawns"] == 1 && stats["pool"]["workers_alive"] == 1
    })
    .await;
    assert_eq!(stats["timed_out"], 1, "{stats}");
    assert_eq!(stats["pool"]["jobs_failed"], 1, "{stats}");
    assert_eq!(stats["pool"]["failures"]["timed_out"], 1, "{stats}");
    // The replacement serves.
    let next = service.get("/primes?below=1000").await;
    assert_eq!(
        (next.status, next.json()["count"].clone()),
        (200, 168.into())
    );
    service.terminate();
    assert!(service.wait().0.success());
}

#[tokio::test]
async fn health_says_503_when_the_pool_is_broken() {
    let service = Service::start(&["--workers", "1", "--broken-workers", "1"]);
    // The pool breaks once its worker's initializer has panicked.
    let health = bounded("the pool to break", async {
        loop {
            let health = service.get("/health").await;
            if health.status != 200 {
                return health;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(health.status, 503, "{health:?}");
    assert!(health.body.starts_with("broken: "), "{health:?}");
    assert!(health.body.contains("--broken-workers"), "{health:?}");
    let primes = service.get("/primes?below=1000").await;
    assert_eq!(primes.status, 503, "{primes:?}");
    assert_eq!(primes.header("retry-after"), Some("1"), "{primes:?}");
    assert!(
        !primes.body.contains("panicked"),
        "internal text leaked: {primes:?}"
    );
    service.terminate();
    assert!(service.wait().0.success());
}

#[tokio::test]
async fn sigterm_cuts_jobs_that_outlast_the_drain_deadline() {
    let service = Service::start(&["--workers", "2", "--drain-timeout-ms", "300"]);
    let endless: Vec<_> = (0..2)
        .map(|_| {
            let addr = service.addr.clone();
            tokio::spawn(async move { get(&addr, ENDLESS_BELOW).await })
        })
        .collect();
    until_in_flight(&service, 2).await;
    let signalled = Instant::now();
    service.terminate();
    for task in endless {
        let answer = bounded("a request cut by the drain", task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 503, "{answer:?}");
    }
    let (status, output) = service.wait();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}: {output}");
    // The jobs would run for minutes: only the deadline can have ended them this soon.
    assert!(
        took < Duration::from_secs(30),
        "exited {took:?} after SIGTERM"
    );
    println!("exited {took:?} after SIGTERM, with a drain deadline of 300 ms");
    assert!(output.contains("drained: 0 requests served"), "{output}");
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_are_scraped_in_prometheus_text() {
    let service = Service::start(&["--workers", "2"]);
    for below in [1000, 2000] {
        assert_eq!(
            service.get(&format!("/primes?below={below}")).await.status,
            200
        );
    }
    let scrape = service.get("/metrics").await;
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    for line in [
        "procpool_workers{pool=\"primes\"} 2",
        "procpool_jobs_completed_total{pool=\"primes\"} 2",
        "procpool_health{pool=\"primes\",state=\"serving\"} 1",
        "procpool_run_time_seconds_count{pool=\"primes\"} 2",
    ] {
        assert!(
            scrape.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            scrape.body
        );
    }
    service.terminate();
    assert!(service.wait().0.success());
}

/// The service's worker processes (its children), by `pgrep -P`.
fn workers_of(service: &Service) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &service.child.id().to_string()])
        .output()
        .expect("running pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until the service has one worker that is not `dead`, and it runs a job; returns it.
///
/// The workers are listed before the stats are read: a replacement starts only after its
/// dead predecessor's job stopped counting as running, so a job counted afterwards, with
/// every dead worker replaced, is the listed worker's (read the other way round, the stats
/// could still count the dead worker's job while the listing shows its replacement,
/// still starting).
async fn the_running_worker(service: &Service, dead: &[u32]) -> u32 {
    bounded("a worker running the request", async {
        loop {
            let alive: Vec<u32> = workers_of(service)
                .into_iter()
                .filter(|pid| !dead.contains(pid))
                .collect();
            let stats = service.get("/stats").await.json();
            let pool = &stats["pool"];
            if pool["jobs_running"] == 1 && pool["respawns"] == dead.len() && alive.len() == 1 {
                return alive[0];
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "killing {pid}");
}

#[tokio::test]
async fn a_dead_worker_is_retried_once_then_answered_503() {
    let service = Service::start(&["--workers", "1"]);
    let path = format!("/primes?below={HEAVY_BELOW}");
    // Killed once: the job runs again on a fresh worker, and the client sees no error.
    let addr = service.addr.clone();
    let (once, twice) = (path.clone(), path.clone());
    let request = tokio::spawn(async move { get(&addr, &once).await });
    let first = the_running_worker(&service, &[]).await;
    kill_9(first);
    let answer = bounded("the retried request", request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["count"], HEAVY_COUNT);
    // Killed on both attempts: 503, to be retried by the client, with no internal text.
    let addr = service.addr.clone();
    let request = tokio::spawn(async move { get(&addr, &twice).await });
    let second = the_running_worker(&service, &[first]).await;
    kill_9(second);
    let third = the_running_worker(&service, &[first, second]).await;
    kill_9(third);
    let answer = bounded("the twice-failed request", request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
    assert!(
        !answer.body.contains("SIGKILL"),
        "internal text leaked: {answer:?}"
    );
    let stats = service.get("/stats").await.json();
    assert_eq!(stats["failed"], 1, "{stats}");
    service.terminate();
    assert!(service.wait().0.success());
}
