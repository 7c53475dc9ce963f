//! [`MpiPoolExecutor`]: the process pool on every node of an MPI job (feature `mpi`).
//!
//! The model is Python's `python -m mpi4py.futures`: one program, started by `mpirun -n N`,
//! calls [`MpiPoolExecutor::world`] first thing in `main`. On rank 0 it returns the
//! executor; every other rank becomes a **node agent**, serves until the pool shuts down,
//! and exits there. A node agent runs its jobs in local worker processes, the same ones a
//! [`ProcessPoolExecutor`](crate::ProcessPoolExecutor) starts, so a job's crash, timeout
//! or cancellation costs only that job's worker, never the rank: MPI itself would end the
//! whole job if a rank died.
//!
//! Layout: [`hub`] is the one thread of a rank that calls MPI; [`envelope`] is what ranks
//! say to each other; [`ranks`] is rank 0's backend under the supervision core; [`agent`]
//! is what the other ranks run.

mod agent;
mod envelope;
mod hub;
mod ranks;

use self::envelope::{AgentConfig, AgentHello, MPI_PROTOCOL_VERSION, ToAgent, ToRoot};
use self::hub::{Arrived, Expect, Hub, Router};
use self::ranks::{Ranks, Routes};
use crate::error::Error;
use crate::executor::{Executor, ShutdownOptions, sealed};
use crate::handle::ErasedHandle;
use crate::job::ErasedJob;
use crate::pool::Pool;
use crate::process::{ProcessPoolBuilder, ProcessPoolExecutor};
use crate::ship::build_id;
use crate::stats::{Health, PoolStats};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// The largest MPI message a rank sends: MPI counts bytes in a C `int`.
const MAX_MESSAGE: usize = i32::MAX as usize - (1 << 20);
/// The largest [`max_frame_size`](ProcessPoolBuilder::max_frame_size) of an MPI pool,
/// leaving room for the frames batched with a large one.
const MAX_FRAME: usize = 1 << 30;

/// How long before a running job is expected to end its worker is sent the next: more
/// than the round trip through rank 0's and the agent's MPI threads while both cores run
/// jobs. That round trip took 1.1 ms with one worker busy on a 2-core machine, but with
/// both busy the workers of W4 waited 3 to 10 ms for their next job whenever it was sent
/// 5 ms ahead (2026-12-04: 35-55 ms of gaps per worker and run, mostly behind the short
/// first jobs, whose estimate still came from the longer last ones). Sent 30 ms ahead (at
/// once, for W4's 10-25 ms jobs: one job waits behind each running one), the gaps fell to
/// 3-14 ms per worker and run, and W4 went from 1.76-1.83 to 1.87-1.90 (three runs each
/// of `mpi_vs_process`'s pools, alternated). The cost: a job sent ahead cannot be taken
/// back from a node agent, so if the job running there takes much longer than expected,
/// the one sent ahead waits behind it even when another worker is idle.
const LEAD: Duration = Duration::from_millis(30);
/// How often an agent reports its workers' memory, when the pool has a ceiling (the local
/// pool reads it as often).
const MEMORY_EVERY: Duration = Duration::from_millis(20);
/// The least time rank 0 waits for every agent's hello: ranks start at about the same
/// time, but a loaded node may take seconds.
const HELLO_WITHIN: Duration = Duration::from_secs(30);

/// A pool of worker processes on every rank but 0 of an MPI job, behind the same
/// [`Executor`] trait as the local pools (feature `mpi`).
///
/// Start the program with `mpirun`; every rank runs `main` from the top, so call
/// [`world`](Self::world) first thing. Rank 0 gets the executor; the other ranks never
/// return from it.
///
/// ```no_run
/// use procpool::{ExecutorExt, MpiPoolExecutor, ProcessPoolExecutor};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), procpool::Error> {
///     // Nothing before this line: every rank runs it.
///     let pool = MpiPoolExecutor::world(ProcessPoolExecutor::builder())?;
///     // From here on, rank 0 only.
///     assert_eq!(pool.submit(square, 12).await?, 144);
///     pool.shutdown().await;
///     Ok(())
/// }
/// ```
///
/// ```text
/// mpirun -n 3 target/release/my_program
/// ```
#[derive(Clone)]
pub struct MpiPoolExecutor {
    local: ProcessPoolExecutor,
    workers_by_rank: Arc<BTreeMap<u32, usize>>,
}

impl MpiPoolExecutor {
    /// Makes this MPI job a pool: on rank 0, returns its executor; on every other rank,
    /// serves as a node agent until the pool on rank 0 shuts down or is dropped, then
    /// exits the process (status 0, or 1 if rank 0 refused it). Call it first thing in
    /// `main` (a plain `main` or `#[tokio::main]`): whatever a program does before it,
    /// every rank does. Errors found before MPI starts (a setting out of range) are
    /// returned on every rank alike.
    ///
    /// `local` holds the settings of every node's local pool ([`initializer`],
    /// [`worker_state`], [`max_tasks_per_child`], [`max_worker_memory`], timeouts, frame
    /// size), which apply per node as on one machine. Its
    /// [`max_workers`](ProcessPoolBuilder::max_workers) is the number of workers *per
    /// rank*; by default each rank takes its share of its node's cores (the cores of the
    /// node divided by the agents on it; rank 0 only supervises).
    ///
    /// Rank 0 waits for every other rank to introduce itself, and checks that each runs
    /// the same build of the program (the same GNU build-id, so that a copy of the binary
    /// at another path or on another node is accepted) and the same protocol.
    ///
    /// # Errors
    ///
    /// - [`Error::Cluster`] on rank 0 if the job has one rank only, if MPI was initialized
    ///   before (one MPI pool per run), if a rank runs another build (the message names
    ///   both build-ids, hosts and paths), or if the program has no build-id. A rank that
    ///   does not introduce itself within 30 s (or the handshake timeout, if longer) is
    ///   named on standard error, and the MPI job aborted: it could not finalize.
    /// - The errors of [`ProcessPoolBuilder::build`] for the settings.
    ///
    /// [`initializer`]: ProcessPoolBuilder::initializer
    /// [`worker_state`]: ProcessPoolBuilder::worker_state
    /// [`max_tasks_per_child`]: ProcessPoolBuilder::max_tasks_per_child
    /// [`max_worker_memory`]: ProcessPoolBuilder::max_worker_memory
    pub fn world(local: ProcessPoolBuilder) -> Result<MpiPoolExecutor, Error> {
        let per_rank = local.has_max_workers();
        let (mut config, settings) = local.settle()?;
        if settings.max_frame > MAX_FRAME {
            return Err(Error::Config(format!(
                "ProcessPoolBuilder::max_frame_size must be at most {MAX_FRAME} bytes for an \
                 MPI pool (an MPI message counts its bytes in a C int), not {}",
                settings.max_frame
            )));
        }
        let routes = Arc::new(Routes::default());
        let (hellos_tx, hellos) = std::sync::mpsc::channel();
        let (agent_tx, agent_rx) = tokio::sync::mpsc::unbounded_channel();
        let delivered = routes.clone();
        let max_frame = settings.max_frame;
        // Rank 0 sends only to agents, agents only to rank 0.
        let router: Router = Box::new(move |source, arrived| {
            let bytes = match arrived {
                Arrived::Message(bytes) => bytes,
                Arrived::Payload { worker, end } => {
                    delivered.deliver_payload(worker, end);
                    return None;
                }
            };
            if source == 0 {
                let _ = agent_tx.send(bytes);
                return None;
            }
            match ToRoot::decode(bytes) {
                Ok(ToRoot::Hello(hello)) => {
                    let _ = hellos_tx.send((source, *hello));
                }
                Ok(ToRoot::BytesThen(worker, head, len)) => {
                    delivered.deliver(source, ToRoot::BytesThen(worker, head, len));
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&len| (1..=max_frame).contains(&len));
                    match hub::piece_tag(worker.slot).zip(len) {
                        Some((tag, len)) => return Some(Expect { tag, len, worker }),
                        // The frame's header says as much: decoding it fails.
                        None => tracing::error!(
                            rank = source,
                            slot = worker.slot,
                            "rank 0 was announced a payload it cannot take"
                        ),
                    }
                }
                Ok(message) => delivered.deliver(source, message),
                Err(e) => tracing::error!(rank = source, "rank 0 cannot read a message: {e}"),
            }
            None
        });
        let hub = Hub::start(router)?;
        if hub.rank != 0 {
            // On a thread of its own: `main` may run inside an async runtime already
            // (`#[tokio::main]`), where the agent could not start its own.
            let outbox = hub.outbox();
            let served = std::thread::Builder::new()
                .name("procpool-agent".into())
                .spawn(move || agent::serve(&outbox, agent_rx, agent::hello()))
                .map_err(|e| Error::io("spawning the node agent's thread", e))?
                .join();
            match served {
                Ok(code) => {
                    hub.stop();
                    std::process::exit(code);
                }
                Err(_) => {
                    eprintln!(
                        "procpool: the node agent of rank {} panicked (a procpool bug); aborting the MPI job",
                        hub.rank
                    );
                    hub.abort(70);
                }
            }
        }
        let agents = match handshake(&hub, &hellos, settings.handshake_timeout.max(HELLO_WITHIN)) {
            Ok(agents) => agents,
            Err(Refusal::Silent(reason)) => {
                // MPI_Finalize would wait for the silent rank forever.
                eprintln!("procpool: {reason}; aborting the MPI job");
                hub.abort(1);
            }
            Err(Refusal::Refused(reason)) => {
                let outbox = hub.outbox();
                for rank in 1..hub.size {
                    outbox.send(rank, ToAgent::Refused(reason.clone()).encode());
                }
                hub.stop();
                return Err(Error::Cluster(reason));
            }
        };
        let workers_by_rank = share(&agents, per_rank.then_some(config.max_workers));
        let outbox = hub.outbox();
        let mut placement = Vec::new();
        let mut agent_ranks = Vec::new();
        for (&rank, &workers) in &workers_by_rank {
            let rank = i32::try_from(rank).unwrap_or(i32::MAX);
            agent_ranks.push(rank);
            placement.extend(std::iter::repeat_n(rank, workers));
            let configure = ToAgent::Configure(AgentConfig {
                initializers: settings.initializers.clone(),
                handshake_timeout: settings.handshake_timeout,
                initializer_timeout: settings.initializer_timeout,
                max_frame: settings.max_frame as u64,
                memory_every: config.max_worker_memory.map(|_| MEMORY_EVERY),
            });
            outbox.send(rank, configure.encode());
        }
        config.max_workers = placement.len();
        let ranks = Ranks {
            routes,
            outbox,
            placement,
            max_frame: settings.max_frame,
            watch_memory: config.max_worker_memory.is_some(),
            generations: AtomicU32::new(0),
            hub: Some(hub),
            agents: agent_ranks,
        };
        let pool = Pool::start(config, move || Ok(ranks))?;
        Ok(MpiPoolExecutor {
            local: ProcessPoolExecutor::from_pool(pool),
            workers_by_rank: Arc::new(workers_by_rank),
        })
    }

    /// How many workers each node agent runs, by rank.
    pub fn workers_by_rank(&self) -> &BTreeMap<u32, usize> {
        &self.workers_by_rank
    }
}

/// Why the ranks cannot serve as a pool.
enum Refusal {
    /// Every rank answered, and is told why.
    Refused(String),
    /// A rank did not answer.
    Silent(String),
}

/// Waits for every agent's hello and checks it against this rank's build.
fn handshake(
    hub: &Hub,
    hellos: &std::sync::mpsc::Receiver<(i32, AgentHello)>,
    within: Duration,
) -> Result<BTreeMap<u32, AgentHello>, Refusal> {
    let refused = Refusal::Refused;
    if hub.size < 2 {
        return Err(refused(format!(
            "an MPI pool needs at least two ranks (rank 0 supervises, the others run jobs), \
             and this job has {}: start it with `mpirun -n 3 ...`",
            hub.size
        )));
    }
    let ours = build_id::current()
        .map_err(|e| refused(format!("reading this program's build-id: {e}")))?
        .ok_or_else(|| {
            refused(
                "this program has no GNU build-id, which tells a copy of it on another node \
                 from another build: link it with one (RUSTFLAGS=\"-C link-arg=-Wl,--build-id\")"
                    .to_owned(),
            )
        })?;
    let exe = std::env::current_exe().map_or_else(|_| "?".into(), |p| p.display().to_string());
    let host = agent::host_name();
    let deadline = Instant::now() + within;
    // Every hello first, so that every rank is there to be told, if one is refused.
    let mut agents = BTreeMap::new();
    while agents.len() + 1 < hub.size as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((rank, hello)) = hellos.recv_timeout(left) else {
            let missing: Vec<_> = (1..hub.size)
                .filter(|r| !agents.contains_key(&(*r as u32)))
                .collect();
            return Err(Refusal::Silent(format!(
                "ranks {missing:?} did not introduce themselves within {within:?}: does every \
                 rank run this program, and call MpiPoolExecutor::world first thing?"
            )));
        };
        agents.insert(rank as u32, hello);
    }
    for (rank, hello) in &agents {
        let theirs = || {
            format!(
                "rank {rank} (process {} on {}, {})",
                hello.pid, hello.host, hello.exe
            )
        };
        if hello.version != MPI_PROTOCOL_VERSION {
            return Err(refused(format!(
                "{} speaks procpool's MPI protocol {}, rank 0 (on {host}, {exe}) {MPI_PROTOCOL_VERSION}",
                theirs(),
                hello.version
            )));
        }
        if hello.build_id.as_deref() != Some(&ours[..])
            || hello.probe != crate::ship::probe_offset()
        {
            let id = hello
                .build_id
                .as_deref()
                .map_or_else(|| "none".into(), build_id::hex);
            return Err(refused(format!(
                "{} runs another build of the program (build-id {id}) than rank 0 (on {host}, \
                 {exe}: build-id {}): start every rank from the same build",
                theirs(),
                build_id::hex(&ours)
            )));
        }
    }
    Ok(agents)
}

/// How many workers each agent runs: `per_rank` if given, else its share of its node's
/// cores (at least one).
fn share(agents: &BTreeMap<u32, AgentHello>, per_rank: Option<usize>) -> BTreeMap<u32, usize> {
    let mut on_host: BTreeMap<&str, usize> = BTreeMap::new();
    for hello in agents.values() {
        *on_host.entry(&hello.host).or_default() += 1;
    }
    agents
        .iter()
        .map(|(&rank, hello)| {
            let workers = per_rank
                .unwrap_or_else(|| (hello.cores as usize / on_host[hello.host.as_str()]).max(1));
            (rank, workers)
        })
        .collect()
}

impl sealed::Sealed for MpiPoolExecutor {
    fn hand_off_is_a_round_trip(&self) -> bool {
        true
    }

    fn admission_slots(&self) -> Option<std::sync::Arc<tokio::sync::Semaphore>> {
        self.local.admission_slots()
    }
}

#[async_trait]
impl Executor for MpiPoolExecutor {
    fn execute(&self, job: ErasedJob) -> Result<ErasedHandle, ErasedJob> {
        self.local.execute(job)
    }

    fn max_workers(&self) -> usize {
        self.local.max_workers()
    }

    fn is_shutdown(&self) -> bool {
        self.local.is_shutdown()
    }

    fn stats(&self) -> PoolStats {
        self.local.stats()
    }

    fn health(&self) -> Health {
        self.local.health()
    }

    fn begin_shutdown(&self, cancel_queued: bool) {
        self.local.begin_shutdown(cancel_queued);
    }

    async fn shutdown_with(&self, options: ShutdownOptions) -> bool {
        self.local.shutdown_with(options).await
    }
}

impl fmt::Debug for MpiPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiPoolExecutor")
            .field("workers_by_rank", &self.workers_by_rank)
            .field("shut_down", &self.local.is_shutdown())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(host: &str, cores: u32) -> AgentHello {
        AgentHello {
            version: MPI_PROTOCOL_VERSION,
            build_id: None,
            probe: 0,
            host: host.into(),
            pid: 1,
            exe: "/x".into(),
            cores,
        }
    }

    #[test]
    fn agents_share_their_nodes_cores() {
        let agents = BTreeMap::from([(1, hello("a", 2)), (2, hello("a", 2)), (3, hello("b", 8))]);
        assert_eq!(
            share(&agents, None),
            BTreeMap::from([(1, 1), (2, 1), (3, 8)])
        );
        assert_eq!(
            share(&agents, Some(3)),
            BTreeMap::from([(1, 3), (2, 3), (3, 3)])
        );
        let crowded = BTreeMap::from([(1, hello("a", 1)), (2, hello("a", 1))]);
        assert_eq!(share(&crowded, None), BTreeMap::from([(1, 1), (2, 1)]));
    }
}
