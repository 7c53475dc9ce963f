//! A node agent: what every rank but 0 does. It introduces itself to rank 0, then starts,
//! feeds, reads and kills local worker processes (the local backend's, with its handshake,
//! initializers and process groups) as rank 0 asks, and reports what becomes of them. It
//! never decodes a job: the frames rank 0 sends are written to the worker as they are, and
//! what the worker writes goes back as it is. A job that crashes its worker costs that
//! worker only; the agent, and so the rank and the MPI job, live on.

use super::envelope::{
    AgentConfig, AgentHello, Failure, MPI_PROTOCOL_VERSION, ToAgent, ToRoot, Worker,
};
use super::hub::Outbox;
use crate::pool::backend::{Backend, StartError, WorkerLink};
use crate::process::child::{LocalWorker, RawReceived, resident_bytes};
use crate::process::{Launcher, Settings};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

/// The most bytes read from a worker at a time, once it writes a lot.
const LARGE_READ: usize = 4 << 20;
/// The most bytes read at a time otherwise.
const SMALL_READ: usize = 64 << 10;
/// How long the agent waits for its workers to go when the pool shuts down.
const LEAVE_WITHIN: Duration = Duration::from_secs(10);

/// What rank 0 asks of one worker's task.
enum Order {
    Write(Vec<u8>),
    Kill,
}

/// Runs the agent until rank 0 says the pool is gone; returns the process's exit code.
pub(super) fn serve(
    outbox: &Outbox,
    inbound: UnboundedReceiver<Vec<u8>>,
    hello: AgentHello,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("procpool: the node agent could not start its runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(agent(outbox, inbound, hello))
}

async fn agent(outbox: &Outbox, mut inbound: UnboundedReceiver<Vec<u8>>, hello: AgentHello) -> i32 {
    outbox.send(0, ToRoot::Hello(Box::new(hello)).encode());
    let config = loop {
        let Some(bytes) = inbound.recv().await else {
            return 1;
        };
        match ToAgent::decode(bytes) {
            Ok(ToAgent::Configure(config)) => break config,
            Ok(ToAgent::Refused(reason)) => {
                eprintln!("procpool: rank 0 refused this rank: {reason}");
                return 1;
            }
            Ok(ToAgent::Shutdown) => return 0,
            Ok(other) => tracing::warn!("a node agent not yet configured was sent {other:?}"),
            Err(e) => tracing::error!("a node agent received a message it cannot read: {e}"),
        }
    };
    let memory_every = config.memory_every;
    let launcher = launcher(config).map(Arc::new);
    let kill = CancellationToken::new();
    let mut workers: HashMap<u32, (u32, UnboundedSender<Order>)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(bytes) = inbound.recv().await {
        match ToAgent::decode(bytes) {
            Ok(ToAgent::Start(worker)) => {
                let (orders, orders_rx) = unbounded_channel();
                workers.insert(worker.slot, (worker.generation, orders));
                let task = run_worker(
                    launcher.clone(),
                    worker,
                    kill.clone(),
                    orders_rx,
                    outbox.clone(),
                    memory_every,
                );
                tasks.spawn(task);
            }
            Ok(ToAgent::Frames(worker, bytes)) => order(&workers, worker, Order::Write(bytes)),
            Ok(ToAgent::Kill(worker)) => order(&workers, worker, Order::Kill),
            Ok(ToAgent::Shutdown) => break,
            Ok(other) => tracing::warn!("a node agent was sent {other:?} again"),
            Err(e) => tracing::error!("a node agent received a message it cannot read: {e}"),
        }
        // Tasks that ended are reaped as they go.
        while tasks.try_join_next().is_some() {}
    }
    kill.cancel();
    drop(workers); // every task's orders end: each kills its worker
    let left = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(LEAVE_WITHIN, left).await.is_err() {
        eprintln!("procpool: a node agent's workers did not stop within {LEAVE_WITHIN:?}");
    }
    0
}

/// Hands `order` to `worker`'s task, if it is still the slot's current worker.
fn order(workers: &HashMap<u32, (u32, UnboundedSender<Order>)>, worker: Worker, order: Order) {
    if let Some((generation, orders)) = workers.get(&worker.slot)
        && *generation == worker.generation
    {
        let _ = orders.send(order);
    }
}

/// The local backend, with the pool's settings.
fn launcher(config: AgentConfig) -> Result<Launcher, String> {
    Launcher::new(Settings {
        initializers: config.initializers,
        handshake_timeout: config.handshake_timeout,
        max_frame: usize::try_from(config.max_frame).unwrap_or(usize::MAX),
        #[cfg(test)]
        stall_handshake: false,
    })
    .map_err(|e| e.to_string())
}

/// Starts a worker for `worker`'s slot, then carries bytes both ways until it ends or is
/// killed, and says how it ended.
async fn run_worker(
    launcher: Result<Arc<Launcher>, String>,
    worker: Worker,
    kill: CancellationToken,
    mut orders: UnboundedReceiver<Order>,
    outbox: Outbox,
    memory_every: Option<Duration>,
) {
    let say = |message: ToRoot| {
        outbox.send(0, message.encode());
    };
    let started = match &launcher {
        Ok(launcher) => launcher.start(worker.slot as usize, &kill).await,
        Err(e) => Err(StartError::Fatal(format!(
            "a node agent cannot start workers: {e}"
        ))),
    };
    let mut link: LocalWorker = match started {
        Ok(link) => link,
        Err(error) => {
            let (failure, text) = match error {
                StartError::Fatal(text) => (Failure::Fatal, text),
                StartError::Repeating(text) => (Failure::Repeating, text),
                StartError::Transient(text) => (Failure::Transient, text),
                StartError::Killed => (Failure::Killed, String::new()),
            };
            say(ToRoot::StartFailed(worker, failure, text));
            return;
        }
    };
    let pid = link.pid().unwrap_or(0);
    say(ToRoot::Started(worker, pid));
    let mut memory = memory_every.map(tokio::time::interval);
    let mut closed = false;
    let mut read = SMALL_READ;
    let exit = loop {
        let memory_tick = async {
            match &mut memory {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            order = orders.recv() => match order {
                // A write fails only once the worker is gone, which its exit says next.
                Some(Order::Write(bytes)) => { let _ = link.send(&bytes, &[]).await; }
                Some(Order::Kill) | None => break link.kill().await,
            },
            received = next_from(&mut link, closed, read) => match received {
                RawReceived::Bytes(bytes) => {
                    read = if bytes.len() == read { LARGE_READ } else { SMALL_READ };
                    say(ToRoot::Bytes(worker, bytes));
                }
                RawReceived::Closed => {
                    closed = true;
                    say(ToRoot::Closed(worker));
                }
                RawReceived::Exited(exit) => break exit,
            },
            _ = memory_tick => {
                if let Some(bytes) = resident_bytes(pid) {
                    say(ToRoot::Memory(worker, pid, bytes));
                }
            }
        }
    };
    say(ToRoot::Exited(worker, exit.code(), exit.signal()));
}

/// What the worker wrote next; once its link closed, only its exit.
async fn next_from(link: &mut LocalWorker, closed: bool, most: usize) -> RawReceived {
    if closed {
        RawReceived::Exited(link.exited().await)
    } else {
        link.recv_bytes(most).await
    }
}

/// Who this agent is, for its hello.
pub(super) fn hello() -> AgentHello {
    AgentHello {
        version: MPI_PROTOCOL_VERSION,
        build_id: crate::ship::build_id::current().ok().flatten(),
        probe: crate::ship::probe_offset(),
        host: host_name(),
        pid: std::process::id(),
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    }
}

/// This machine's name (`/proc/sys/kernel/hostname`, or `HOSTNAME`).
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "an unknown host".into())
}
