//! What rank 0 and its node agents say to each other: one MPI message is one [`ToAgent`]
//! or [`ToRoot`].
//!
//! A message is its body followed by a trailer: the slot and the generation of the worker
//! it concerns (little-endian `u32`s) and one byte naming its kind. The trailer is at the
//! end so that a message carrying a worker's frames can hand them on without moving them:
//! truncating the trailer leaves exactly the bytes the worker or the pool reads. Every
//! other body is postcard. Decoding never panics: a message that does not parse is an
//! [`EnvelopeError`].

use crate::pool::backend::StartError;
use crate::ship::Target;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bumped whenever a message below changes meaning.
pub(super) const MPI_PROTOCOL_VERSION: u32 = 4;

/// Slot, generation, kind.
const TRAILER: usize = 9;

/// Which worker of which slot a message concerns: a slot's every new worker has a new
/// generation, so that what its predecessor said last is never taken for its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Worker {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// What an agent says first: who it is and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AgentHello {
    pub(super) version: u32,
    /// The executable's GNU build-id, if it has one.
    pub(super) build_id: Option<Vec<u8>>,
    pub(super) probe: i64,
    pub(super) host: String,
    pub(super) pid: u32,
    pub(super) exe: String,
    /// The cores this process may run on.
    pub(super) cores: u32,
}

/// How an agent is to run its local pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AgentConfig {
    pub(super) initializers: Vec<Target>,
    pub(super) handshake_timeout: Duration,
    pub(super) initializer_timeout: Duration,
    pub(super) max_frame: u64,
    /// Report each worker's resident memory this often, if at all.
    pub(super) memory_every: Option<Duration>,
}

/// How a worker's start failed, as [`StartError`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Failure {
    Fatal,
    Repeating,
    Transient,
    Killed,
}

impl Failure {
    /// `error`, to be sent.
    pub(super) fn of(error: StartError) -> (Failure, String) {
        match error {
            StartError::Fatal(text) => (Failure::Fatal, text),
            StartError::Repeating(text) => (Failure::Repeating, text),
            StartError::Transient(text) => (Failure::Transient, text),
            StartError::Killed => (Failure::Killed, String::new()),
        }
    }

    /// The error sent as `self` and `text`.
    pub(super) fn into_error(self, text: String) -> StartError {
        match self {
            Failure::Fatal => StartError::Fatal(text),
            Failure::Repeating => StartError::Repeating(text),
            Failure::Transient => StartError::Transient(text),
            Failure::Killed => StartError::Killed,
        }
    }
}

/// Rank 0 to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToAgent {
    /// The handshake's answer: serve with these settings.
    Configure(AgentConfig),
    /// The handshake's other answer: this agent (or another) cannot serve; exit.
    Refused(String),
    /// Start a worker for this slot.
    Start(Worker),
    /// Bytes for the worker, as they are to be written to it.
    Frames(Worker, Vec<u8>),
    /// Frames for the worker whose last one's payload, this many bytes, comes next from
    /// rank 0, on its own, in messages of at most `hub::PIECE` bytes: a large argument
    /// crosses MPI straight from the caller's buffer, into buffers the agent writes from
    /// as they are, each while the next one is received.
    FramesThen(Worker, Vec<u8>, u64),
    /// Stop the worker now.
    Kill(Worker),
    /// The pool is gone: stop every worker and leave.
    Shutdown,
}

/// An agent to rank 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToRoot {
    Hello(Box<AgentHello>),
    /// The worker completed its handshake and is ready for jobs.
    Started(Worker, u32),
    StartFailed(Worker, Failure, String),
    /// Bytes the worker wrote, as it wrote them.
    Bytes(Worker, Vec<u8>),
    /// Bytes the worker wrote, which end where the payload of a large frame begins; the
    /// payload, this many bytes, comes next in pieces tagged for the worker
    /// (`hub::piece_tag`), each handed on as the agent reads it, or is cut short by an
    /// empty piece if the worker dies writing it.
    BytesThen(Worker, Vec<u8>, u64),
    /// The worker's link closed.
    Closed(Worker),
    /// The worker is gone (its exit code and signal): nothing more comes from it.
    Exited(Worker, Option<i32>, Option<i32>),
    /// The worker's process id and resident memory, in bytes.
    Memory(Worker, u32, u64),
    /// The agent stopped its workers and leaves, after a shutdown: it sends nothing more.
    Bye,
}

/// A message that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum EnvelopeError {
    #[error("an MPI message of {0} bytes is too short for its trailer")]
    Short(usize),
    #[error("an MPI message of unknown kind {0}")]
    UnknownKind(u8),
    #[error("an MPI message's body does not decode: {0}")]
    Body(String),
}

const CONFIGURE: u8 = 1;
const REFUSED: u8 = 2;
const START: u8 = 3;
const FRAMES: u8 = 4;
const KILL: u8 = 5;
const SHUTDOWN: u8 = 6;
const FRAMES_THEN: u8 = 7;
const HELLO: u8 = 11;
const STARTED: u8 = 12;
const START_FAILED: u8 = 13;
const BYTES: u8 = 14;
const CLOSED: u8 = 15;
const EXITED: u8 = 16;
const MEMORY: u8 = 17;
const BYE: u8 = 18;
const BYTES_THEN: u8 = 19;

const NOBODY: Worker = Worker {
    slot: u32::MAX,
    generation: u32::MAX,
};

/// Appends the trailer to `body`.
fn seal(mut body: Vec<u8>, worker: Worker, kind: u8) -> Vec<u8> {
    body.reserve_exact(TRAILER);
    body.extend_from_slice(&worker.slot.to_le_bytes());
    body.extend_from_slice(&worker.generation.to_le_bytes());
    body.push(kind);
    body
}

fn postcard_of(value: &impl Serialize) -> Vec<u8> {
    // Only this module's own plain types are encoded here, which postcard cannot fail on.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Splits the trailer off `bytes`, leaving the body.
fn open(bytes: &mut Vec<u8>) -> Result<(Worker, u8), EnvelopeError> {
    let len = bytes.len();
    let Some(at) = len.checked_sub(TRAILER) else {
        return Err(EnvelopeError::Short(len));
    };
    let t = &bytes[at..];
    let slot = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let generation = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    let kind = t[8];
    bytes.truncate(at);
    Ok((Worker { slot, generation }, kind))
}

/// `bytes` followed by the length of the payload that comes after them.
fn with_length(mut bytes: Vec<u8>, payload: u64) -> Vec<u8> {
    bytes.extend_from_slice(&payload.to_le_bytes());
    bytes
}

/// Splits the length [`with_length`] wrote off `bytes`.
fn length_of(bytes: &mut Vec<u8>) -> Result<u64, EnvelopeError> {
    let Some(at) = bytes.len().checked_sub(8) else {
        return Err(EnvelopeError::Short(bytes.len() + TRAILER));
    };
    let mut payload = [0; 8];
    payload.copy_from_slice(&bytes[at..]);
    bytes.truncate(at);
    Ok(u64::from_le_bytes(payload))
}

fn body_of<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, EnvelopeError> {
    postcard::from_bytes(body).map_err(|e| EnvelopeError::Body(e.to_string()))
}

impl ToAgent {
    /// The message's bytes.
    pub(super) fn encode(self) -> Vec<u8> {
        match self {
            ToAgent::Configure(config) => seal(postcard_of(&config), NOBODY, CONFIGURE),
            ToAgent::Refused(reason) => seal(postcard_of(&reason), NOBODY, REFUSED),
            ToAgent::Start(worker) => seal(Vec::new(), worker, START),
            ToAgent::Frames(worker, bytes) => seal(bytes, worker, FRAMES),
            ToAgent::FramesThen(worker, bytes, payload) => {
                seal(with_length(bytes, payload), worker, FRAMES_THEN)
            }
            ToAgent::Kill(worker) => seal(Vec::new(), worker, KILL),
            ToAgent::Shutdown => seal(Vec::new(), NOBODY, SHUTDOWN),
        }
    }

    /// The message `bytes` hold.
    pub(super) fn decode(mut bytes: Vec<u8>) -> Result<ToAgent, EnvelopeError> {
        let (worker, kind) = open(&mut bytes)?;
        Ok(match kind {
            CONFIGURE => ToAgent::Configure(body_of(&bytes)?),
            REFUSED => ToAgent::Refused(body_of(&bytes)?),
            START => ToAgent::Start(worker),
            FRAMES => ToAgent::Frames(worker, bytes),
            FRAMES_THEN => {
                let payload = length_of(&mut bytes)?;
                ToAgent::FramesThen(worker, bytes, payload)
            }
            KILL => ToAgent::Kill(worker),
            SHUTDOWN => ToAgent::Shutdown,
            other => return Err(EnvelopeError::UnknownKind(other)),
        })
    }

    /// [`encode`](Self::encode) for a worker's frames and the payload of the last one, in
    /// one buffer made once.
    pub(super) fn frames(worker: Worker, frames: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut bytes = crate::spares::SPARES.empty(frames.len() + payload.len() + TRAILER);
        bytes.extend_from_slice(frames);
        bytes.extend_from_slice(payload);
        seal(bytes, worker, FRAMES)
    }
}

impl ToRoot {
    /// The message's bytes.
    pub(super) fn encode(self) -> Vec<u8> {
        match self {
            ToRoot::Hello(hello) => seal(postcard_of(&hello), NOBODY, HELLO),
            ToRoot::Started(worker, pid) => seal(postcard_of(&pid), worker, STARTED),
            ToRoot::StartFailed(worker, failure, text) => {
                seal(postcard_of(&(failure, text)), worker, START_FAILED)
            }
            ToRoot::Bytes(worker, bytes) => seal(bytes, worker, BYTES),
            ToRoot::BytesThen(worker, bytes, payload) => {
                seal(with_length(bytes, payload), worker, BYTES_THEN)
            }
            ToRoot::Closed(worker) => seal(Vec::new(), worker, CLOSED),
            ToRoot::Exited(worker, code, signal) => {
                seal(postcard_of(&(code, signal)), worker, EXITED)
            }
            ToRoot::Memory(worker, pid, bytes) => seal(postcard_of(&(pid, bytes)), worker, MEMORY),
            ToRoot::Bye => seal(Vec::new(), NOBODY, BYE),
        }
    }

    /// The message `bytes` hold.
    pub(super) fn decode(mut bytes: Vec<u8>) -> Result<ToRoot, EnvelopeError> {
        let (worker, kind) = open(&mut bytes)?;
        Ok(match kind {
            HELLO => ToRoot::Hello(body_of(&bytes)?),
            STARTED => ToRoot::Started(worker, body_of(&bytes)?),
            START_FAILED => {
                let (failure, text) = body_of(&bytes)?;
                ToRoot::StartFailed(worker, failure, text)
            }
            BYTES => ToRoot::Bytes(worker, bytes),
            BYTES_THEN => {
                let payload = length_of(&mut bytes)?;
                ToRoot::BytesThen(worker, bytes, payload)
            }
            CLOSED => ToRoot::Closed(worker),
            EXITED => {
                let (code, signal) = body_of(&bytes)?;
                ToRoot::Exited(worker, code, signal)
            }
            MEMORY => {
                let (pid, resident) = body_of(&bytes)?;
                ToRoot::Memory(worker, pid, resident)
            }
            BYE => ToRoot::Bye,
            other => return Err(EnvelopeError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker() -> impl Strategy<Value = Worker> {
        (any::<u32>(), any::<u32>()).prop_map(|(slot, generation)| Worker { slot, generation })
    }

    fn to_agent() -> impl Strategy<Value = ToAgent> {
        prop_oneof![
            (any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(max_frame, every)| {
                ToAgent::Configure(AgentConfig {
                    initializers: Vec::new(),
                    handshake_timeout: Duration::from_millis(max_frame % 100_000),
                    initializer_timeout: Duration::from_millis(max_frame % 7_000),
                    max_frame,
                    memory_every: every.map(Duration::from_micros),
                })
            }),
            ".*".prop_map(ToAgent::Refused),
            worker().prop_map(ToAgent::Start),
            (worker(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(w, b)| ToAgent::Frames(w, b)),
            (
                worker(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u64>()
            )
                .prop_map(|(w, b, n)| ToAgent::FramesThen(w, b, n)),
            worker().prop_map(ToAgent::Kill),
            Just(ToAgent::Shutdown),
        ]
    }

    fn to_root() -> impl Strategy<Value = ToRoot> {
        prop_oneof![
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
                any::<i64>(),
                ".*"
            )
                .prop_map(|(build_id, probe, host)| ToRoot::Hello(Box::new(
                    AgentHello {
                        version: MPI_PROTOCOL_VERSION,
                        build_id,
                        probe,
                        host,
                        pid: 7,
                        exe: "/x".into(),
                        cores: 2,
                    }
                ))),
            (worker(), any::<u32>()).prop_map(|(w, pid)| ToRoot::Started(w, pid)),
            (worker(), ".*").prop_map(|(w, t)| ToRoot::StartFailed(w, Failure::Transient, t)),
            (worker(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(w, b)| ToRoot::Bytes(w, b)),
            (
                worker(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u64>()
            )
                .prop_map(|(w, b, n)| ToRoot::BytesThen(w, b, n)),
            worker().prop_map(ToRoot::Closed),
            (worker(), any::<Option<i32>>(), any::<Option<i32>>())
                .prop_map(|(w, c, s)| ToRoot::Exited(w, c, s)),
            (worker(), any::<u32>(), any::<u64>()).prop_map(|(w, p, b)| ToRoot::Memory(w, p, b)),
            Just(ToRoot::Bye),
        ]
    }

    proptest! {
        #[test]
        fn every_message_to_an_agent_survives_the_trip(message in to_agent()) {
            prop_assert_eq!(ToAgent::decode(message.clone().encode()), Ok(message));
        }

        #[test]
        fn every_message_to_rank_0_survives_the_trip(message in to_root()) {
            prop_assert_eq!(ToRoot::decode(message.clone().encode()), Ok(message));
        }

        /// Whatever arrives, decoding answers and does not panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ToAgent::decode(bytes.clone());
            let _ = ToRoot::decode(bytes);
        }
    }

    #[test]
    fn frames_are_carried_as_they_are() {
        let worker = Worker {
            slot: 3,
            generation: 9,
        };
        let bytes = ToAgent::frames(worker, b"frames", b"payload");
        assert_eq!(
            ToAgent::decode(bytes),
            Ok(ToAgent::Frames(worker, b"framespayload".to_vec()))
        );
        assert_eq!(ToRoot::decode(vec![1, 2]), Err(EnvelopeError::Short(2)));
        assert_eq!(
            ToRoot::decode(vec![0; 9]),
            Err(EnvelopeError::UnknownKind(0))
        );
    }
}
