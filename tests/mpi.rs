//! The MPI pool through its public API, on real `mpirun -n 3` jobs (feature `mpi`).
//!
//! Its own binary, without the test harness: it is both the driver (run by `cargo test`)
//! and the MPI program the driver starts with `mpirun`, whose ranks each run `main` from
//! the top and call `MpiPoolExecutor::world` first. The driver bounds every `mpirun` in
//! time and checks its exit status and what rank 0 printed.
//!
//! Without the feature it prints why it is skipped and passes.

#[cfg(feature = "mpi")]
mod common;

#[cfg(not(feature = "mpi"))]
fn main() {
    println!("tests/mpi.rs: skipped: built without the `mpi` feature (cargo test --features mpi)");
}

#[cfg(feature = "mpi")]
fn main() {
    imp::main();
}

#[cfg(feature = "mpi")]
mod imp {
    use futures::{StreamExt, TryStreamExt};
    use procpool::{
        Error, Executor, ExecutorExt, JobError, JobOptions, MpiPoolExecutor, ProcessPoolExecutor,
        ReturnWhen, SharedBuffer, SharedSlice, as_completed, wait,
    };
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Names the scenario the ranks of an `mpirun` run.
    const SCENARIO: &str = "PROCPOOL_MPI_SCENARIO";
    /// The bound on one `mpirun`.
    const BOUND: Duration = Duration::from_secs(90);

    pub fn main() {
        if let Ok(scenario) = std::env::var(SCENARIO) {
            std::process::exit(match scenario.as_str() {
                "api" => api(),
                "one_job" => one_job(),
                "hung_initializer" => hung_initializer(),
                "held_answers" => held_answers(),
                "streams" => streams(),
                "killed_agent" => killed_agent(),
                "panic_on_rank_0" => panic_on_rank_0(),
                "two_hosts" => two_hosts(),
                other => {
                    eprintln!("unknown scenario {other}");
                    3
                }
            });
        }
        let started = Instant::now();
        let tests: [(&str, fn()); 9] = [
            (
                "the_public_api_works_across_ranks",
                the_public_api_works_across_ranks,
            ),
            (
                "answers_a_worker_held_back_arrive_when_the_next_job_aborts_it",
                answers_a_worker_held_back_arrive_when_the_next_job_aborts_it,
            ),
            (
                "large_answers_of_two_workers_of_one_agent_arrive_whole_together",
                large_answers_of_two_workers_of_one_agent_arrive_whole_together,
            ),
            (
                "a_copy_of_the_binary_elsewhere_is_accepted",
                a_copy_of_the_binary_elsewhere_is_accepted,
            ),
            (
                "a_node_agents_workers_have_the_pools_initializer_timeout",
                a_node_agents_workers_have_the_pools_initializer_timeout,
            ),
            (
                "another_build_is_refused_naming_both",
                another_build_is_refused_naming_both,
            ),
            (
                "a_panic_on_rank_0_ends_the_program",
                a_panic_on_rank_0_ends_the_program,
            ),
            (
                "a_killed_agent_ends_the_program",
                a_killed_agent_ends_the_program,
            ),
            (
                "ranks_on_another_host_serve_over_tcp",
                ranks_on_another_host_serve_over_tcp,
            ),
        ];
        for (name, test) in tests {
            let at = Instant::now();
            test();
            println!("test {name} ... ok ({:.1} s)", at.elapsed().as_secs_f64());
        }
        println!(
            "test result: ok. {} passed; finished in {:.1} s",
            tests.len(),
            started.elapsed().as_secs_f64()
        );
    }

    // ------------------------------------------------------------------ the driver

    /// `mpirun` for this machine: ranks may outnumber cores, and shared memory carries the
    /// messages.
    fn mpirun() -> Command {
        mpirun_over("self,vader")
    }

    /// `mpirun` whose messages go over the transports `btl`.
    fn mpirun_over(btl: &str) -> Command {
        let mut command = Command::new("mpirun");
        command
            .args(["--oversubscribe", "--bind-to", "none", "--mca", "btl", btl])
            .args(["-x", SCENARIO])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    struct Run {
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    }

    /// Runs `command` to its end, killing its process group if it takes more than `bound`.
    fn run(mut command: Command, scenario: &str, bound: Duration) -> Run {
        command.env(SCENARIO, scenario);
        let child = command
            .spawn()
            .expect("mpirun starts (install openmpi-bin)");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(bound) {
            Ok(output) => output.expect("waiting for mpirun"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &format!("-{pid}")])
                    .status();
                panic!("mpirun ({scenario}) did not end within {bound:?}");
            }
        };
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `command` on `scenario` and checks that it succeeded and rank 0 said so.
    fn runs_ok(command: Command, scenario: &str) {
        let run = run(command, scenario, BOUND);
        assert!(
            run.status.success() && run.stdout.contains(&format!("{scenario}: ok")),
            "{}\n{}\n{}",
            run.status,
            run.stdout,
            run.stderr
        );
    }

    fn this_program() -> PathBuf {
        std::env::current_exe().expect("the test's own path")
    }

    fn the_public_api_works_across_ranks() {
        let mut command = mpirun();
        command.args(["-n", "3"]).arg(this_program());
        runs_ok(command, "api");
    }

    fn answers_a_worker_held_back_arrive_when_the_next_job_aborts_it() {
        let mut command = mpirun();
        command.args(["-n", "3"]).arg(this_program());
        runs_ok(command, "held_answers");
    }

    fn large_answers_of_two_workers_of_one_agent_arrive_whole_together() {
        let mut command = mpirun();
        command.args(["-n", "2"]).arg(this_program());
        runs_ok(command, "streams");
    }

    fn a_panic_on_rank_0_ends_the_program() {
        let mut command = mpirun();
        command.args(["-n", "3"]).arg(this_program());
        let run = run(command, "panic_on_rank_0", BOUND);
        assert!(!run.status.success(), "{}", run.status);
        assert!(
            run.stderr.contains("rank 0 panics on purpose"),
            "{}\n{}",
            run.stdout,
            run.stderr
        );
    }

    fn a_copy_of_the_binary_elsewhere_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy-of-the-program");
        std::fs::copy(this_program(), &copy).unwrap();
        let mut command = mpirun();
        command
            .args(["-n", "1"])
            .arg(this_program())
            .args([":", "-n", "2"])
            .arg(&copy);
        runs_ok(command, "one_job");
    }

    fn a_node_agents_workers_have_the_pools_initializer_timeout() {
        let mut command = mpirun();
        command.args(["-n", "2"]).arg(this_program());
        runs_ok(command, "hung_initializer");
    }

    fn another_build_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("another-build");
        let (ours, theirs) = write_another_build(&this_program(), &other);
        let mut command = mpirun();
        command
            .args(["-n", "1"])
            .arg(this_program())
            .args([":", "-n", "2"])
            .arg(&other);
        let run = run(command, "one_job", BOUND);
        let said = format!("{}\n{}", run.stdout, run.stderr);
        assert!(!run.status.success(), "{said}");
        assert!(
            said.contains("runs another build") && said.contains(&ours) && said.contains(&theirs),
            "expected both build-ids ({ours}, {theirs}):\n{said}"
        );
    }

    /// A second host, as far as Open MPI can tell: `mpirun` starts its daemon for `nodeb`
    /// through a stand-in for `ssh` (`plm_rsh_agent`) that runs it here in a UTS namespace
    /// of its own, named `nodeb`. The two ranks there run a copy of the program at another
    /// path, as on a node with its own disk; Open MPI carries their messages to rank 0 over
    /// TCP (shared memory alone refuses: the ranks are on different hosts).
    fn ranks_on_another_host_serve_over_tcp() {
        if !can_unshare() {
            println!("  (skipped: needs `unshare --uts`, which needs root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        std::fs::write(
            &ssh,
            "#!/bin/sh\n\
             # ssh HOST COMMAND...: runs COMMAND here, on a host named HOST.\n\
             while [ \"${1#-}\" != \"$1\" ]; do shift; done\n\
             host=$1; shift\n\
             exec unshare --uts sh -c 'hostname \"$0\" && exec sh -c \"$1\"' \"$host\" \"$*\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let here = host_name();
        let hostfile = dir.path().join("hosts");
        std::fs::write(&hostfile, format!("{here} slots=1\nnodeb slots=2\n")).unwrap();
        let copy = dir.path().join("nodeb-disk").join("the-program");
        std::fs::create_dir(copy.parent().unwrap()).unwrap();
        std::fs::copy(this_program(), &copy).unwrap();
        let mut command = mpirun_over("self,vader,tcp");
        command
            .arg("--hostfile")
            .arg(&hostfile)
            .args(["--mca", "plm_rsh_agent"])
            .arg(&ssh)
            .args(["-n", "1", "--host", &format!("{here}:1")])
            .arg(this_program())
            .args([":", "-n", "2", "--host", "nodeb:2"])
            .arg(&copy);
        runs_ok(command, "two_hosts");
    }

    /// Whether this process may give a child a host name of its own.
    fn can_unshare() -> bool {
        Command::new("unshare")
            .args(["--uts", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn host_name() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned()
    }

    fn a_killed_agent_ends_the_program() {
        let mut command = mpirun();
        command.args(["-n", "3"]).arg(this_program());
        command.env(SCENARIO, "killed_agent");
        let mut child = command.spawn().expect("mpirun starts");
        let group = child.id();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(pid) = line.strip_prefix("agent ") {
                    let _ = tx.send(pid.trim().parse::<u32>().unwrap());
                }
            }
        });
        let agent = match rx.recv_timeout(BOUND) {
            Ok(pid) => pid,
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &format!("-{group}")])
                    .status();
                panic!("rank 0 never named an agent");
            }
        };
        let killed = Instant::now();
        assert!(
            Command::new("kill")
                .args(["-KILL", &agent.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = killed + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", &format!("-{group}")])
                    .status();
                panic!("the MPI job still ran 5 s after a node agent was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{status}");
        println!(
            "  (the job ended {:.2} s after the agent's SIGKILL, {status})",
            killed.elapsed().as_secs_f64()
        );
    }

    /// Writes a copy of `program` whose GNU build-id differs in one byte: another build, as
    /// far as the check can tell. Returns both build-ids in hex.
    fn write_another_build(program: &Path, to: &Path) -> (String, String) {
        let mut bytes = std::fs::read(program).unwrap();
        // The note: name size 4, description size 20, type 3 (NT_GNU_BUILD_ID), "GNU\0".
        let header = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
        let at = bytes
            .windows(header.len())
            .position(|w| w == header)
            .expect("the test binary has a 20-byte GNU build-id")
            + header.len();
        let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let ours = hex(&bytes[at..at + 20]);
        bytes[at] ^= 0xff;
        let theirs = hex(&bytes[at..at + 20]);
        std::fs::write(to, &bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
        (ours, theirs)
    }

    // ------------------------------------------------------------------ the ranks

    fn echo(bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }

    fn length(bytes: Vec<u8>) -> usize {
        bytes.len()
    }

    fn pattern(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    /// The rank of the agent this worker belongs to, and the agent's pid.
    fn whereami(_: ()) -> (u32, u32) {
        std::thread::sleep(Duration::from_millis(200));
        let rank = std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_default();
        (
            rank.parse().unwrap_or(u32::MAX),
            std::os::unix::process::parent_id(),
        )
    }

    fn checked_div(x: u64) -> u64 {
        assert!(!x.is_multiple_of(5), "{x} is a multiple of five");
        100 / x
    }

    fn abort(_: ()) {
        std::process::abort()
    }

    /// Returns `size` bytes, and aborts 5 ms later: while they are being written.
    fn die_writing(size: usize) -> Vec<u8> {
        let answer = vec![7; size];
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(5));
            std::process::abort()
        });
        answer
    }

    /// Holds `mib` MiB, touched, until killed (or for 30 s).
    /// Sums its part of the input into its one element of the output.
    fn shared_sum((input, output): (SharedSlice<u64>, SharedBuffer<u64>)) {
        output.set(0, input.iter().sum());
    }

    fn hog(mib: usize) -> usize {
        let held = vec![1_u8; mib << 20];
        std::thread::sleep(Duration::from_secs(30));
        held.len()
    }

    fn pid_of(_: u32) -> u32 {
        std::process::id()
    }

    fn sleep_ms(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// Built once per worker: the rank of the node it runs on.
    struct Node(u32);

    fn node() -> Node {
        Node(
            std::env::var("OMPI_COMM_WORLD_RANK")
                .unwrap_or_default()
                .parse()
                .unwrap_or(u32::MAX),
        )
    }

    fn node_of_state(_: ()) -> u32 {
        procpool::with_worker_state(|node: &Node| node.0)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The pool, on rank 0 (the other ranks serve and exit in `world`); `None` if it could
    /// not be made, which `scenario` reports.
    fn world(scenario: &str, local: procpool::ProcessPoolBuilder) -> Option<MpiPoolExecutor> {
        MpiPoolExecutor::world(local)
            .map_err(|e| eprintln!("{scenario}: {e}"))
            .ok()
    }

    /// Rank 0 checks, step by step, what a local pool promises; every other rank serves.
    fn api() -> i32 {
        let local = ProcessPoolExecutor::builder()
            .worker_state(node)
            .max_tasks_per_child(100)
            .max_worker_memory(200 << 20);
        let Some(pool) = world("api", local) else {
            return 1;
        };
        let workers: Vec<_> = pool
            .workers_by_rank()
            .iter()
            .map(|(r, w)| (*r, *w))
            .collect();
        // The two agents share this machine's cores.
        let share = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1);
        assert_eq!(
            workers,
            [(1, share), (2, share)],
            "each agent's share of the cores"
        );
        assert_eq!(pool.max_workers(), 2 * share);
        runtime().block_on(async {
            // submit, and where jobs ran
            assert_eq!(pool.submit(square, 12).await.unwrap(), 144);
            // The pool does not wait for its workers to start: with one still starting,
            // the other agent could run all four jobs.
            let deadline = Instant::now() + Duration::from_secs(30);
            while pool.stats().workers_alive != pool.max_workers() {
                assert!(Instant::now() < deadline, "{:?}", pool.stats());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let handles: Vec<_> = (0..4).map(|_| pool.submit(whereami, ())).collect();
            let mut ranks = BTreeSet::new();
            for handle in handles {
                let (rank, agent) = handle.await.unwrap();
                assert_ne!(agent, std::process::id(), "a job ran under rank 0");
                ranks.insert(rank);
            }
            assert_eq!(ranks, BTreeSet::from([1, 2]), "jobs ran on both agents");
            // large arguments and results, around the size from which they cross MPI on
            // their own and into kept buffers, and in several pieces (the last one short),
            // several at once and again
            for _ in 0..2 {
                for size in [
                    (1 << 20) - 1,
                    1 << 20,
                    (3 << 20) + 7,
                    16 << 20,
                    (17 << 20) + 3,
                ] {
                    let payload = pattern(size);
                    let handles: Vec<_> =
                        (0..3).map(|_| pool.submit(echo, payload.clone())).collect();
                    for handle in handles {
                        assert!(handle.await.unwrap() == payload, "echo of {size} bytes");
                    }
                    assert_eq!(pool.submit(length, pattern(size)).await.unwrap(), size);
                    assert!(pool.submit(pattern, size).await.unwrap() == payload);
                }
            }
            // worker_state, per node
            let node = pool.submit(node_of_state, ()).await.unwrap();
            assert!(node == 1 || node == 2, "{node}");
            // ordered map with per-item errors
            let results: Vec<_> = pool.map(checked_div, 1..=12).collect().await;
            for (x, result) in (1..=12_u64).zip(&results) {
                match result {
                    Ok(q) => assert_eq!(*q, 100 / x),
                    Err(e) => assert!(x.is_multiple_of(5) && e.is_panic(), "{x}: {e}"),
                }
            }
            // unordered map
            let sum: u64 = pool
                .map_unordered(square, 0..1000_u64)
                .try_fold(0, |a, b| async move { Ok(a + b) })
                .await
                .unwrap();
            assert_eq!(sum, (0..1000_u64).map(|x| x * x).sum());
            // as_completed and wait
            let handles: Vec<_> = [3000, 10]
                .into_iter()
                .map(|ms| pool.submit(sleep_ms, ms))
                .collect();
            let (index, first) = as_completed(handles).next().await.unwrap();
            assert_eq!((index, first), (1, Ok(10)));

            let handles: Vec<_> = [10, 5_000]
                .into_iter()
                .map(|ms| pool.submit(sleep_ms, ms))
                .collect();
            let waited = wait(
                handles,
                ReturnWhen::FirstCompleted,
                Some(Duration::from_secs(30)),
            )
            .await;
            assert_eq!((waited.done.len(), waited.pending.len()), (1, 1));
            for handle in &waited.pending {
                assert!(handle.cancel(), "a running job can be cancelled");
            }
            for handle in waited.pending {
                assert_eq!(handle.await, Err(JobError::Cancelled));
            }
            // a crash is isolated: the job fails alone, its worker is replaced
            match pool.submit(abort, ()).await {
                Err(JobError::WorkerDied { exit, .. }) => {
                    let worker = exit.worker().expect("the worker is known");
                    assert!(matches!(worker.rank(), Some(1 | 2)), "{worker}");
                    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(pool.submit(square, 3).await.unwrap(), 9);
            // a worker that dies while it writes a large answer to its agent: the job fails
            // alone, the frame begun is dropped, and the agent goes on
            match pool.submit(die_writing, 96 << 20).await {
                Err(JobError::WorkerDied { exit, .. }) => {
                    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit}");
                }
                other => panic!("{:?}", other.map(|answer| answer.len())),
            }
            let payload = pattern((17 << 20) + 3);
            let handles: Vec<_> = (0..4).map(|_| pool.submit(echo, payload.clone())).collect();
            for handle in handles {
                assert!(
                    handle.await.unwrap() == payload,
                    "an echo after the answer cut short"
                );
            }
            // a timeout stops the job, not only the wait
            let at = Instant::now();
            let late = pool.submit_with(
                sleep_ms,
                30_000,
                JobOptions::new().timeout(Duration::from_millis(300)),
            );
            assert!(matches!(late.await, Err(JobError::TimedOut(_))));
            assert!(at.elapsed() < Duration::from_secs(20));
            assert_eq!(pool.submit(square, 4).await.unwrap(), 16);
            // the memory ceiling, per node
            match pool.submit(hog, 400).await {
                Err(JobError::MemoryLimit { limit, resident }) => {
                    assert!(resident > limit, "{resident} > {limit}")
                }
                other => panic!("{other:?}"),
            }
            // shared arrays: the agents' workers, on this machine, open rank 0's segments
            let input = SharedSlice::from_slice(&(0..100_000).collect::<Vec<u64>>()).unwrap();
            let output = SharedBuffer::<u64>::zeroed(4).unwrap();
            let parts = (0..4).map(|i| {
                (
                    input.slice(i * 25_000..(i + 1) * 25_000),
                    output.slice(i..=i),
                )
            });
            let handles: Vec<_> = parts.map(|part| pool.submit(shared_sum, part)).collect();
            for handle in handles {
                handle.await.unwrap();
            }
            let sums: Vec<u64> = (0..4_u64)
                .map(|i| (i * 25_000..(i + 1) * 25_000).sum())
                .collect();
            assert_eq!(output.to_vec(), sums);
            // max_tasks_per_child: 300 jobs, 100 per worker
            let handles: Vec<_> = (0..300).map(|x| pool.submit(pid_of, x)).collect();
            let mut pids = BTreeSet::new();
            for handle in handles {
                pids.insert(handle.await.unwrap());
            }
            assert!(pids.len() >= 3, "workers were recycled: {pids:?}");
            let stats = pool.stats();
            assert!(stats.respawns >= 4, "{stats:?}");
            pool.shutdown().await;
        });
        println!("api: ok");
        0
    }

    /// Rank 0 on this host, two agents on `nodeb`: jobs run there, large payloads cross,
    /// a crash there is isolated, a timeout there kills.
    fn two_hosts() -> i32 {
        let Some(pool) = world("two_hosts", ProcessPoolExecutor::builder()) else {
            return 1;
        };
        assert_ne!(host_name(), "nodeb");
        runtime().block_on(async {
            let handles: Vec<_> = (0..4).map(|_| pool.submit(host_of, ())).collect();
            for handle in handles {
                assert_eq!(
                    handle.await.unwrap(),
                    "nodeb",
                    "a job ran on the other host"
                );
            }
            let payload = pattern(16 << 20);
            assert!(pool.submit(echo, payload.clone()).await.unwrap() == payload);
            match pool.submit(abort, ()).await {
                Err(JobError::WorkerDied { exit, .. }) => {
                    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit}")
                }
                other => panic!("{other:?}"),
            }
            let late = pool.submit_with(
                sleep_ms,
                30_000,
                JobOptions::new().timeout(Duration::from_millis(300)),
            );
            assert!(matches!(late.await, Err(JobError::TimedOut(_))));
            assert_eq!(pool.submit(square, 5).await.unwrap(), 25);
            pool.shutdown().await;
        });
        println!("two_hosts: ok");
        0
    }

    /// The name of the host the job ran on.
    fn host_of(_: ()) -> String {
        host_name()
    }

    /// As under `#[tokio::main]`: every rank calls `world` inside a runtime.
    fn one_job() -> i32 {
        runtime().block_on(async {
            let Some(pool) = world("one_job", ProcessPoolExecutor::builder()) else {
                return 1;
            };
            assert_eq!(pool.submit(square, 7).await.unwrap(), 49);
            pool.shutdown().await;
            println!("one_job: ok");
            0
        })
    }

    /// An initializer that never ends.
    fn hang() {
        std::thread::sleep(Duration::from_secs(600));
    }

    /// The node agent's workers hang in their initializer: each is killed after the
    /// pool's `initializer_timeout` (1 s, not the default 60 s), and after five in a row
    /// the pool is broken, naming the setting, well within the run's bound.
    fn hung_initializer() -> i32 {
        let local = ProcessPoolExecutor::builder()
            .initializer(hang)
            .initializer_timeout(Duration::from_secs(1));
        let Some(pool) = world("hung_initializer", local) else {
            return 1;
        };
        runtime().block_on(async {
            match pool.submit(square, 7).await {
                Err(procpool::JobError::PoolBroken { reason }) => {
                    assert!(reason.contains("initializer_timeout"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            pool.shutdown().await;
        });
        println!("hung_initializer: ok");
        0
    }

    /// One agent with two workers: the payloads of their large answers come to rank 0 in
    /// pieces, both at once, between small answers, and one of them cut short by its
    /// worker's death beside a whole one; every answer arrives whole, or its job fails
    /// alone.
    fn streams() -> i32 {
        use crate::common::events::{count, record_events, seen};
        const PIECES: &str = "a large answer arrived in pieces";
        const CUT: &str = "a large answer was cut short";
        record_events();
        let Some(pool) = world("streams", ProcessPoolExecutor::builder().max_workers(2)) else {
            return 1;
        };
        assert_eq!(pool.max_workers(), 2);
        runtime().block_on(async {
            // Small arguments, large answers: both workers write theirs at once.
            for size in [1 << 20, (9 << 20) + 5, 40 << 20] {
                let payload = pattern(size);
                let mut handles = Vec::new();
                for i in 0..6_u64 {
                    handles.push((pool.submit(pattern, size), pool.submit(square, i)));
                }
                for (i, (large, small)) in (0..).zip(handles) {
                    assert!(
                        large.await.unwrap() == payload,
                        "answer {i} of {size} bytes"
                    );
                    assert_eq!(small.await.unwrap(), i * i);
                }
            }
            // Every large answer was handed on in pieces.
            assert_eq!(count(PIECES), 3 * 6, "answers in pieces");
            // A worker that dies writing its answer: rank 0 drops the payload it began,
            // and only its job fails. It may die before it writes: then it is tried again.
            let payload = pattern(33 << 20);
            let mut tries = 0;
            while !seen(CUT) {
                tries += 1;
                assert!(tries <= 5, "no answer was cut short in 5 tries");
                let whole = pool.submit(echo, payload.clone());
                let cut = pool.submit(die_writing, 96 << 20);
                assert!(whole.await.unwrap() == payload, "the whole one beside");
                match cut.await {
                    Err(JobError::WorkerDied { exit, .. }) => {
                        assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit}");
                    }
                    other => panic!("{:?}", other.map(|answer| answer.len())),
                }
            }
            let handles: Vec<_> = (0..4).map(|_| pool.submit(echo, payload.clone())).collect();
            for handle in handles {
                assert!(handle.await.unwrap() == payload, "an echo after the cut");
            }
            pool.shutdown().await;
            assert_eq!(count(PIECES), 3 * 6 + tries + 4, "answers in pieces");
            assert_eq!(count(CUT), 1, "answers cut short");
            println!("streams: cut short in try {tries}");
        });
        println!("streams: ok");
        0
    }

    /// An agent's worker holds small answers back while its next job is there, as a local
    /// pool's does; when that job aborts it, the agent hands on the answers left in its
    /// journal before its end, so that none is lost (as `process_held_answers` proves
    /// for the local pool).
    fn held_answers() -> i32 {
        runtime().block_on(async {
            let Some(pool) = world("held_answers", ProcessPoolExecutor::builder()) else {
                return 1;
            };
            for round in 0..5 {
                crate::common::jobs_around_an_abort(&pool, round).await;
            }
            pool.shutdown().await;
            println!("held_answers: ok");
            0
        })
    }

    /// Rank 0 panics while jobs run: unwinding drops the pool, which stops the agents and
    /// finalizes MPI; the program ends with the panic's status rather than hanging.
    fn panic_on_rank_0() -> i32 {
        let pool = MpiPoolExecutor::world(ProcessPoolExecutor::builder()).expect("a pool");
        let _running = pool.submit(sleep_ms, 60_000);
        std::thread::sleep(Duration::from_millis(200));
        panic!("rank 0 panics on purpose");
    }

    /// Rank 0 names an agent (the parent of a worker) and waits on a long job; the driver
    /// kills that agent.
    fn killed_agent() -> i32 {
        let Some(pool) = world("killed_agent", ProcessPoolExecutor::builder()) else {
            return 1;
        };
        runtime().block_on(async {
            let (_, agent) = pool.submit(whereami, ()).await.unwrap();
            println!("agent {agent}");
            let _: Result<u64, Error> = pool.submit(sleep_ms, 60_000).await.map_err(Error::from);
        });
        println!("killed_agent: the job ended by itself");
        0
    }
}
