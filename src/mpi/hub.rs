//! [`Hub`]: the one thread of a rank that calls MPI. It initializes MPI, sends what the
//! rank's other threads queue, hands every message that arrives to a router, and finalizes
//! MPI when it is stopped.
//!
//! MPI here cannot wait for a message and for the rank's own threads at once, so the hub
//! polls: without a pause while anything happened in the last [`HOT`] (a job's answer, the
//! next job of a caller that awaits one at a time), then with naps of a sixteenth of the
//! time nothing happened, up to [`MAX_NAP`] (so an answer is seen late by at most 6% of
//! the job's time, and 1 ms: the supervision core sends a worker its next job ahead of
//! time to cover it, see `Caps::lead`), and after [`ASLEEP_AFTER`] of nothing, naps of
//! [`ASLEEP`]. Each poll takes CPU from the workers. On two cores, W4 gave speedups
//! of 1.68–1.72 with these naps and 1.71–1.78 with naps of a sixty-fourth, at most
//! 250 µs, which poll up to four times as often: within the noise of three runs each. The
//! thread's timer slack is 1 ns, so that a nap ends when due rather than up to 50 µs later
//! ([`crate::sys::timers::precise_timers`]), and a poll probes until two probes in a row find
//! nothing ([`drain`] says why). A queued send wakes a napping hub at once. A send is
//! immediate (`MPI_Isend`), and the hub goes on receiving until it completes, so that two
//! ranks sending each other large messages at the same time cannot deadlock. A message
//! is received into a buffer of its exact size (`MPI_Improbe`, `MPI_Mrecv`).
//!
//! A large payload may also arrive in pieces, each a message of its own with the tag of
//! the stream it belongs to ([`piece_tag`]): once the router has said that a payload of
//! some length comes next on that tag ([`Expect`]), the hub receives each piece straight
//! into its place in one buffer of the payload's exact size, and hands the router the
//! whole payload ([`Arrived::Payload`], [`PayloadEnd::Whole`]); an empty piece says the
//! payload was cut short ([`PayloadEnd::CutShort`]), and a piece longer than what is
//! missing, or a second announcement on a tag whose payload is still arriving, that the
//! sender broke the protocol ([`PayloadEnd::Invalid`]). A node agent hands on its workers'
//! large answers so, each piece while it reads the next from the worker.
//!
//! A panic on the hub thread (a procpool bug) aborts the MPI job (`MPI_Abort`) rather than
//! unwinding through MPI, whose `MPI_Finalize` would then wait forever for the other
//! ranks.

use super::envelope::Worker;
use crate::error::Error;
use crate::spares::SPARES;
use ::mpi::point_to_point::{Message, Status};
use ::mpi::traits::{Communicator, Destination, Equivalence, Source};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tag of every message procpool sends.
const TAG: i32 = 0x7070;
/// How long the hub polls without a pause after something happened.
const HOT: Duration = Duration::from_micros(300);
/// The longest nap between two polls while the rank is awake.
const MAX_NAP: Duration = Duration::from_millis(1);
/// After this long with nothing sent or received, the rank is asleep...
const ASLEEP_AFTER: Duration = Duration::from_secs(1);
/// ...and polls this often.
const ASLEEP: Duration = Duration::from_millis(5);

/// The largest message a payload of a [`Request::SendPair`] is sent in: the receiver can
/// hand on one piece (a node agent writes it to its worker) while it receives the next.
pub(super) const PIECE: usize = 8 << 20;

/// The tag of the pieces of payloads that concern the worker of `slot` of the sending rank,
/// if it has one: every such tag is below [`TAG`], so within the 32,767 every MPI library
/// offers.
pub(super) fn piece_tag(slot: u32) -> Option<i32> {
    i32::try_from(slot)
        .ok()
        .and_then(|slot| slot.checked_add(1))
        .filter(|&tag| tag < TAG)
}

/// What the other threads ask of the hub.
enum Request {
    /// To a rank, with a tag.
    Send(i32, i32, Vec<u8>),
    /// A head, then a large payload sent from where it is, in pieces of at most
    /// [`PIECE`] bytes (MPI keeps their order: nothing comes between them).
    SendPair(i32, Vec<u8>, Bytes),
    Stop,
    Abort(i32),
}

/// Hands the hub's thread a message: to whom, and its bytes.
#[derive(Debug, Clone)]
pub(super) struct Outbox(mpsc::Sender<Request>);

impl Outbox {
    /// An outbox no hub serves, for tests of what holds one.
    #[cfg(test)]
    pub(super) fn detached() -> Outbox {
        Outbox(mpsc::channel().0)
    }

    /// Queues `bytes` for `rank`; `false` if the hub has stopped.
    pub(super) fn send(&self, rank: i32, bytes: Vec<u8>) -> bool {
        self.0.send(Request::Send(rank, TAG, bytes)).is_ok()
    }

    /// Queues `piece` of a payload for `rank`, with `tag` (from [`piece_tag`]); an empty
    /// one says that the payload is cut short. `false` if the hub has stopped.
    pub(super) fn send_piece(&self, rank: i32, tag: i32, piece: Vec<u8>) -> bool {
        self.0.send(Request::Send(rank, tag, piece)).is_ok()
    }

    /// Queues `head`, then `payload` right after it (in pieces of at most [`PIECE`]
    /// bytes), for `rank`; `false` if the hub has stopped.
    pub(super) fn send_pair(&self, rank: i32, head: Vec<u8>, payload: Bytes) -> bool {
        self.0.send(Request::SendPair(rank, head, payload)).is_ok()
    }
}

/// Where the hub puts what arrives: called on its thread with the sender's rank and what
/// arrived; returns what the sender sends next, if a payload in pieces. It must not
/// block.
pub(super) type Router = Box<dyn FnMut(i32, Arrived) -> Option<Expect> + Send>;

/// What the hub hands its router.
#[derive(Debug)]
pub(super) enum Arrived {
    /// A message, with the tag of every message but pieces.
    Message(Vec<u8>),
    /// How the payload expected for `worker` ended.
    Payload { worker: Worker, end: PayloadEnd },
}

/// How a payload sent in pieces ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PayloadEnd {
    /// Every byte arrived.
    Whole(Vec<u8>),
    /// Its sender said, with an empty piece, that the payload ends here (its worker died
    /// writing it): what came of it is dropped.
    CutShort,
    /// Its sender broke the protocol (what this says): what came of it is dropped, and
    /// the stream it belonged to cannot be trusted.
    Invalid(String),
}

/// A payload that a rank sends next, in pieces with this tag: its length in all, and the
/// worker whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expect {
    pub(super) tag: i32,
    pub(super) len: usize,
    pub(super) worker: Worker,
}

/// The router, and the payloads it was told to expect, by sender and tag.
struct Inbox {
    router: Router,
    payloads: HashMap<(i32, i32), Assembly>,
}

/// A payload arriving in pieces: a buffer of its exact length, how much of it has
/// arrived, and whose it is.
#[derive(Debug)]
struct Assembly {
    worker: Worker,
    buffer: Vec<u8>,
    arrived: usize,
}

/// Where a piece that just arrived goes.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Into the awaited payload, from this offset.
    At(usize),
    /// Nowhere: the awaited payload ends, cut short by its sender.
    CutShort,
    /// Nowhere: it is longer than what the awaited payload still lacks.
    TooLong { missing: usize },
    /// Nowhere: no payload is awaited from its sender on its tag (an empty one ends a
    /// payload that was refused, which is not an error).
    Stray,
}

/// Where a piece of `len` bytes goes, given the payload its sender and tag are awaited
/// for, if one is.
fn placement(awaited: Option<&Assembly>, len: usize) -> Placement {
    match awaited {
        None => Placement::Stray,
        Some(_) if len == 0 => Placement::CutShort,
        Some(payload) => {
            let missing = payload.buffer.len() - payload.arrived;
            if len <= missing {
                Placement::At(payload.arrived)
            } else {
                Placement::TooLong { missing }
            }
        }
    }
}

impl Inbox {
    /// Hands `arrived` from `source` to the router, and takes note of what it says comes
    /// next. A payload announced on a tag whose last one has not ended breaks the
    /// protocol: pieces carry no worker, so the pieces that follow cannot be told apart,
    /// and neither payload is taken.
    fn route(&mut self, source: i32, arrived: Arrived) {
        let Some(Expect { tag, len, worker }) = (self.router)(source, arrived) else {
            return;
        };
        let assembly = Assembly {
            worker,
            buffer: SPARES.filled(len),
            arrived: 0,
        };
        if let Some(earlier) = self.payloads.insert((source, tag), assembly) {
            let why = format!(
                "rank {source} announced a payload on tag {tag} before the last one on it ended"
            );
            tracing::error!(rank = source, tag, "{why}");
            self.end(source, tag, dropped(PayloadEnd::Invalid(why.clone())));
            SPARES.keep(earlier.buffer);
            let _ = (self.router)(
                source,
                Arrived::Payload {
                    worker: earlier.worker,
                    end: PayloadEnd::Invalid(why),
                },
            );
        }
    }

    /// Ends the payload awaited from `source` on `tag`, if one is: `ending` makes of its
    /// buffer what the router is handed.
    fn end(&mut self, source: i32, tag: i32, ending: impl FnOnce(Vec<u8>) -> PayloadEnd) {
        if let Some(Assembly { worker, buffer, .. }) = self.payloads.remove(&(source, tag)) {
            let end = ending(buffer);
            let _ = (self.router)(source, Arrived::Payload { worker, end });
        }
    }
}

/// An ending of a payload that drops what arrived of it (its buffer kept for later) and
/// says `end`.
fn dropped(end: PayloadEnd) -> impl FnOnce(Vec<u8>) -> PayloadEnd {
    move |buffer| {
        SPARES.keep(buffer);
        end
    }
}

/// The rank's MPI thread.
#[derive(Debug)]
pub(super) struct Hub {
    outbox: Outbox,
    thread: Option<std::thread::JoinHandle<()>>,
    /// This process's rank in `MPI_COMM_WORLD`, and the number of ranks.
    pub(super) rank: i32,
    pub(super) size: i32,
}

impl Hub {
    /// Initializes MPI on a new thread, which hands what arrives to `router`.
    pub(super) fn start(router: Router) -> Result<Hub, Error> {
        let (outbox, requests) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("procpool-mpi".into())
            .spawn(move || {
                // MPI is called from this thread only.
                let Some((universe, _)) = ::mpi::initialize_with_threading(::mpi::Threading::Funneled)
                else {
                    let _ = started_tx.send(Err(()));
                    return;
                };
                // Its naps end when due, not up to 50 µs later (see the module's docs);
                // after MPI's start, so that the threads MPI starts keep the default.
                crate::sys::precise_timers();
                let world = universe.world();
                let _ = started_tx.send(Ok((world.rank(), world.size())));
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve(&world, &requests, router)
                }));
                match served {
                    Ok(Some(code)) => world.abort(code),
                    Ok(None) => {}
                    Err(_) => {
                        eprintln!("procpool: the MPI thread of rank {} panicked (a procpool bug); aborting the MPI job", world.rank());
                        world.abort(70);
                    }
                }
                drop(universe); // MPI_Finalize
            })
            .map_err(|e| Error::io("spawning the MPI thread", e))?;
        match started_rx.recv() {
            Ok(Ok((rank, size))) => Ok(Hub {
                outbox: Outbox(outbox),
                thread: Some(thread),
                rank,
                size,
            }),
            _ => {
                let _ = thread.join();
                Err(Error::Cluster(
                    "MPI could not be initialized: it was initialized before in this process \
                     (one MPI pool per run), or the MPI library refused"
                        .into(),
                ))
            }
        }
    }

    /// What queues messages for this hub.
    pub(super) fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// Sends what is queued, then aborts the MPI job with `code` (`MPI_Abort`): for a job
    /// that cannot finalize, a rank having never answered.
    pub(super) fn abort(self, code: i32) -> ! {
        let _ = self.outbox.0.send(Request::Abort(code));
        // MPI_Abort ends this process; a park may wake spuriously.
        loop {
            std::thread::park();
        }
    }

    /// Sends what is queued, then finalizes MPI and waits for the thread to end.
    /// `MPI_Finalize` waits for the other ranks to finalize too.
    pub(super) fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.outbox.0.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The hub's loop, until it is stopped or every sender is gone; `Some(code)` if it is to
/// abort the MPI job.
fn serve(
    world: &impl Communicator,
    requests: &mpsc::Receiver<Request>,
    router: Router,
) -> Option<i32> {
    let mut inbox = Inbox {
        router,
        payloads: HashMap::new(),
    };
    let router = &mut inbox;
    let mut last_active = Instant::now();
    loop {
        let mut active = false;
        loop {
            match requests.try_recv() {
                Ok(request @ (Request::Send(..) | Request::SendPair(..))) => {
                    carry(world, request, router);
                    active = true;
                }
                Ok(Request::Stop) | Err(mpsc::TryRecvError::Disconnected) => return None,
                Ok(Request::Abort(code)) => return Some(code),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        active |= receive_ready(world, router);
        if active {
            last_active = Instant::now();
            continue;
        }
        let idle = last_active.elapsed();
        if idle < HOT {
            std::thread::yield_now();
            continue;
        }
        // Nothing for a while: nap, and wake at once for a send.
        let nap = if idle < ASLEEP_AFTER {
            (idle / 16).min(MAX_NAP)
        } else {
            SPARES.release();
            ASLEEP
        };
        match requests.recv_timeout(nap) {
            Ok(request @ (Request::Send(..) | Request::SendPair(..))) => {
                carry(world, request, router);
                last_active = Instant::now();
            }
            Ok(Request::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Ok(Request::Abort(code)) => return Some(code),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Sends what `request` asks, then keeps the buffers it is done with for later messages
/// (a shared payload, once the pool has let go of it too).
fn carry(world: &impl Communicator, request: Request, inbox: &mut Inbox) {
    match request {
        Request::Send(rank, tag, bytes) => {
            send(world, rank, tag, &bytes, inbox);
            SPARES.keep(bytes);
        }
        Request::SendPair(rank, head, payload) => {
            send(world, rank, TAG, &head, inbox);
            for piece in payload.chunks(PIECE) {
                send(world, rank, TAG, piece, inbox);
            }
            crate::spares::recycle(payload);
        }
        Request::Stop | Request::Abort(_) => {}
    }
}

/// Sends `bytes` to `rank` with `tag`, receiving what arrives meanwhile.
fn send(world: &impl Communicator, rank: i32, tag: i32, bytes: &[u8], inbox: &mut Inbox) {
    ::mpi::request::scope(|scope| {
        let mut request = world
            .process_at_rank(rank)
            .immediate_send_with_tag(scope, bytes, tag);
        loop {
            match request.test() {
                Ok(_) => break,
                Err(pending) => {
                    request = pending;
                    if !receive_ready(world, inbox) {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    });
}

/// Receives every message that has arrived; `true` if there was one. Messages of every
/// tag are probed for together, so that those from one rank are received in the order it
/// sent them.
fn receive_ready(world: &impl Communicator, inbox: &mut Inbox) -> bool {
    drain(
        || world.any_process().immediate_matched_probe(),
        |(message, status)| take(message, status, inbox),
    )
}

/// Hands `take` what `probe` finds until two probes in a row find nothing; `true` if one
/// found something.
///
/// Two: a probe (`MPI_Improbe`) that finds nothing makes MPI read what has come in since
/// (Open MPI's `opal_progress`) but does not look again, so a message read then is found
/// only by the next probe. With one probe, a message that came during a nap waited for
/// the end of the next nap: on two cores a job of 5 ms came back 0.5–0.8 ms after its
/// worker answered, against naps of about 0.35 ms.
fn drain<M>(mut probe: impl FnMut() -> Option<M>, mut take: impl FnMut(M)) -> bool {
    let mut any = false;
    let mut missed = false;
    loop {
        match probe() {
            Some(message) => {
                (any, missed) = (true, false);
                take(message);
            }
            None if missed => return any,
            None => missed = true,
        }
    }
}

/// Receives the message `probe` matched: into a buffer of its own, or into its place in
/// the payload it is a piece of.
fn take(message: Message, status: Status, inbox: &mut Inbox) {
    // A count that does not fit a usize cannot have been sent.
    let len = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0);
    let (source, tag) = (status.source_rank(), status.tag());
    if tag == TAG {
        let mut bytes = SPARES.filled(len);
        message.matched_receive_into(&mut bytes[..]);
        inbox.route(source, Arrived::Message(bytes));
        return;
    }
    let placement = placement(inbox.payloads.get(&(source, tag)), len);
    if let Placement::At(at) = placement
        && let Some(payload) = inbox.payloads.get_mut(&(source, tag))
    {
        message.matched_receive_into(&mut payload.buffer[at..at + len]);
        payload.arrived += len;
        if payload.arrived == payload.buffer.len() {
            inbox.end(source, tag, PayloadEnd::Whole);
        }
        return;
    }
    // Received only to be dropped.
    let mut discard = SPARES.filled(len);
    message.matched_receive_into(&mut discard[..]);
    SPARES.keep(discard);
    match placement {
        Placement::CutShort => inbox.end(source, tag, dropped(PayloadEnd::CutShort)),
        Placement::TooLong { missing } => {
            let why = format!(
                "rank {source} sent a piece of {len} bytes on tag {tag} where {missing} \
                 were missing"
            );
            tracing::error!(rank = source, tag, "{why}");
            inbox.end(source, tag, dropped(PayloadEnd::Invalid(why)));
        }
        Placement::Stray if len > 0 => tracing::error!(
            rank = source,
            tag,
            len,
            "a piece of a payload that nothing awaits was dropped"
        ),
        Placement::Stray | Placement::At(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn worker(slot: u32, generation: u32) -> Worker {
        Worker { slot, generation }
    }

    /// A probe that behaves as Open MPI's: it matches only what an earlier call read in,
    /// and a call that matches nothing reads in what has arrived.
    struct Library {
        arrived: Vec<u32>,
        read_in: Vec<u32>,
        probes: usize,
    }

    impl Library {
        fn probe(&mut self) -> Option<u32> {
            self.probes += 1;
            if self.read_in.is_empty() {
                self.read_in.append(&mut self.arrived);
                return None;
            }
            Some(self.read_in.remove(0))
        }
    }

    #[test]
    fn a_drain_takes_the_messages_its_own_first_empty_probe_reads_in() {
        let mut library = Library {
            arrived: vec![1, 2],
            read_in: vec![],
            probes: 0,
        };
        let mut taken = vec![];
        assert!(drain(|| library.probe(), |m| taken.push(m)));
        assert_eq!(taken, [1, 2], "what had arrived before the drain");
        assert_eq!(library.probes, 5, "a miss, two matches, two misses");
        library.arrived.push(3);
        taken.clear();
        assert!(drain(|| library.probe(), |m| taken.push(m)));
        assert_eq!(taken, [3]);
    }

    #[test]
    fn a_drain_with_nothing_arrived_stops_after_two_probes() {
        let mut library = Library {
            arrived: vec![],
            read_in: vec![],
            probes: 0,
        };
        assert!(!drain(
            || library.probe(),
            |_: u32| panic!("nothing arrived")
        ));
        assert_eq!(library.probes, 2);
    }

    fn awaiting(len: usize, arrived: usize) -> Assembly {
        Assembly {
            worker: worker(0, 1),
            buffer: vec![0; len],
            arrived,
        }
    }

    #[test]
    fn a_piece_goes_where_the_payload_it_belongs_to_has_come_to() {
        assert_eq!(placement(Some(&awaiting(10, 0)), 4), Placement::At(0));
        assert_eq!(placement(Some(&awaiting(10, 4)), 6), Placement::At(4));
        assert_eq!(placement(Some(&awaiting(10, 4)), 0), Placement::CutShort);
        assert_eq!(
            placement(Some(&awaiting(10, 4)), 7),
            Placement::TooLong { missing: 6 }
        );
        assert_eq!(placement(None, 3), Placement::Stray);
        assert_eq!(placement(None, 0), Placement::Stray);
    }

    /// Every payload's end, as the router was handed it.
    type Ends = Arc<Mutex<Vec<(Worker, PayloadEnd)>>>;

    /// An inbox whose router announces, for each message, a payload of that message's
    /// first byte in length for worker (slot 0, generation = its second byte), and
    /// records every payload's end.
    fn inbox() -> (Inbox, Ends) {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let seen = ends.clone();
        let router: Router = Box::new(move |_, arrived| match arrived {
            Arrived::Message(bytes) => Some(Expect {
                tag: 1,
                len: usize::from(bytes[0]),
                worker: worker(0, u32::from(bytes[1])),
            }),
            Arrived::Payload { worker, end } => {
                seen.lock().unwrap().push((worker, end));
                None
            }
        });
        let inbox = Inbox {
            router,
            payloads: HashMap::new(),
        };
        (inbox, ends)
    }

    #[test]
    fn a_payload_announced_while_one_arrives_on_its_tag_ends_both_as_invalid() {
        let (mut inbox, ends) = inbox();
        inbox.route(2, Arrived::Message(vec![8, 1]));
        assert_eq!(inbox.payloads[&(2, 1)].buffer.len(), 8);
        inbox.route(2, Arrived::Message(vec![5, 2]));
        // Neither is awaited any more: the pieces that follow cannot be told apart.
        assert!(inbox.payloads.is_empty());
        let ends = ends.lock().unwrap();
        let mut workers: Vec<_> = ends.iter().map(|(w, _)| w.generation).collect();
        workers.sort_unstable();
        assert_eq!(workers, [1, 2]);
        assert!(
            ends.iter()
                .all(|(_, end)| matches!(end, PayloadEnd::Invalid(why) if why.contains("before the last one"))),
            "{ends:?}"
        );
    }

    #[test]
    fn a_payload_ends_whole_cut_short_or_invalid_for_the_worker_it_was_announced_for() {
        let (mut inbox, ends) = inbox();
        inbox.route(3, Arrived::Message(vec![4, 7]));
        inbox
            .payloads
            .get_mut(&(3, 1))
            .unwrap()
            .buffer
            .copy_from_slice(b"abcd");
        inbox.end(3, 1, PayloadEnd::Whole);
        inbox.route(3, Arrived::Message(vec![4, 8]));
        inbox.end(3, 1, dropped(PayloadEnd::CutShort));
        // Nothing awaited: nothing to end.
        inbox.end(3, 1, dropped(PayloadEnd::CutShort));
        assert_eq!(
            *ends.lock().unwrap(),
            [
                (worker(0, 7), PayloadEnd::Whole(b"abcd".to_vec())),
                (worker(0, 8), PayloadEnd::CutShort),
            ]
        );
    }

    #[test]
    fn piece_tags_stay_below_the_tag_of_messages() {
        assert_eq!(piece_tag(0), Some(1));
        assert_eq!(piece_tag(41), Some(42));
        assert_eq!(piece_tag(u32::try_from(TAG).unwrap() - 1), None);
        assert_eq!(piece_tag(u32::MAX), None);
    }
}
