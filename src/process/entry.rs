//! How a process learns it is a worker and becomes one: one environment variable, set by
//! the pool when it starts the process, read by the automatic entry hook before `main` or
//! by [`crate::init`]. Both go through [`enter`].

use super::launch::widen_buffers;
use crate::sys::SharedWord;
use crate::wire::message::{HANDSHAKE_MAX_FRAME, SECRET_LEN};
use crate::wire::outbox::Outbox;
use crate::worker::{self, Identity};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The variable a pool sets on the processes it starts.
pub(crate) const WORKER_ENV: &str = "PROCPOOL_WORKER";
const SPEC_VERSION: &str = "4";

/// Exit code of a worker that found its parent gone at start.
const EXIT_ORPHANED: i32 = 3;
/// Exit code of a worker that could not talk to its pool.
const EXIT_PROTOCOL: i32 = 70;

/// What a worker needs to reach its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) worker_id: u64,
    pub(crate) parent_pid: u32,
    pub(crate) secret: [u8; SECRET_LEN],
    /// Whether the link opens with the descriptor of the word the worker and its pool
    /// share, to say which of the jobs written to it it may still start (see
    /// [`crate::wire::claims`]); not where the platform has no memfds.
    ///
    /// The link itself is the worker's standard input: its end of a socket pair its parent
    /// made for it, which has no name, so that nothing else can reach it and nothing is
    /// left to remove.
    pub(crate) word: bool,
}

impl Spec {
    /// `4;<worker id>;<parent pid>;<secret hex>;<w if a word is sent, else ->`.
    pub(crate) fn encode(&self) -> String {
        let secret: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        let word = if self.word { "w" } else { "-" };
        format!(
            "{SPEC_VERSION};{};{};{secret};{word}",
            self.worker_id, self.parent_pid
        )
    }

    pub(crate) fn parse(text: &str) -> Option<Spec> {
        let mut fields = text.splitn(5, ';');
        if fields.next()? != SPEC_VERSION {
            return None;
        }
        let worker_id = fields.next()?.parse().ok()?;
        let parent_pid = fields.next()?.parse().ok()?;
        let hex = fields.next()?;
        if hex.len() != 2 * SECRET_LEN || !hex.is_ascii() {
            return None;
        }
        let mut secret = [0; SECRET_LEN];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        let word = match fields.next()? {
            "w" => true,
            "-" => false,
            _ => return None,
        };
        Some(Spec {
            worker_id,
            parent_pid,
            secret,
            word,
        })
    }

    fn identity(&self) -> Identity {
        Identity {
            worker_id: self.worker_id,
            secret: self.secret,
        }
    }
}

/// `true` if this process was started by a pool as a worker.
pub(crate) fn is_worker_process() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// The worker spec from the environment, if this process was started as a worker.
fn take_spec() -> Option<Spec> {
    let value = std::env::var_os(WORKER_ENV)?;
    Spec::parse(value.to_str()?)
}

/// If this process was started as a worker, becomes one and never returns; otherwise
/// returns at once. The one entry of the hook (`before_main`) and of [`crate::init`].
///
/// The worker variable is removed first, so that programs a job starts (this executable
/// among them) do not take the worker role: where that cannot be done soundly (another
/// thread already runs), the worker says so on its standard error.
pub(crate) fn enter(before_main: bool) {
    let Some(spec) = take_spec() else {
        return;
    };
    if !crate::sys::remove_env_if_alone(WORKER_ENV, before_main) {
        eprintln!(
            "procpool worker {}: other threads were running when the worker started, so \
             {WORKER_ENV} stays set and programs that jobs start inherit it; call \
             procpool::init() first thing in main",
            std::process::id()
        );
    }
    run(&spec)
}

/// Runs the worker loop for the pool `spec` names and exits the process.
fn run(spec: &Spec) -> ! {
    crate::sys::ignore_sigpipe();
    if !crate::sys::die_with_parent(spec.parent_pid) {
        std::process::exit(EXIT_ORPHANED);
    }
    crate::sys::fill_standard_descriptors();
    crate::run::install_worker_panic_hook();
    #[cfg(test)]
    if std::env::var_os(worker::fault::STALL_ENV).is_some() {
        std::thread::sleep(std::time::Duration::from_secs(120)); // never handshakes
    }
    let served = connect(spec).and_then(|(mut conn, shared)| {
        // Without the shared word, the worker runs every job it is sent; without its
        // journal, it writes every answer at once.
        // The outbox writes through a second descriptor of the same socket (the worker
        // loop keeps reading through the first, with the standard library's reads into
        // uninitialized memory for large payloads).
        let shared = shared.map(Arc::new);
        let writer = conn.stream().try_clone().ok().map(Arc::new);
        let outbox = shared
            .clone()
            .zip(writer)
            .and_then(|(page, writer)| Outbox::new(writer, page));
        let claims = shared.as_deref().map(SharedWord::word);
        worker::serve(&mut conn, &spec.identity(), claims, outbox.as_ref())
    });
    let code = match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            EXIT_PROTOCOL
        }
    };
    std::process::exit(code)
}

/// The worker's end of its link, from its standard input, and the word it shares with the
/// pool, which the link opens with.
fn connect(spec: &Spec) -> Result<(worker::Conn<UnixStream>, Option<SharedWord>), String> {
    let stream = crate::sys::socket_from_stdin()
        .ok_or("standard input is not the pool's socket (a worker is started by its pool)")?;
    let word = if spec.word {
        crate::sys::receive_descriptor(&stream)
            .map_err(|e| format!("receiving the shared word: {e}"))?
            .and_then(SharedWord::from_fd)
    } else {
        None
    };
    widen_buffers(&stream);
    Ok((worker::Conn::new(stream, HANDSHAKE_MAX_FRAME), word))
}

/// Called when a worker process reached `main` and tried to build a pool: tells the parent
/// why this worker will never answer, so that its error names the fix.
pub(crate) fn report_hook_missing() {
    let Some(spec) = take_spec() else {
        return;
    };
    if let Ok((mut conn, _)) = connect(&spec) {
        let _ = conn.send(&crate::wire::message::FromWorker::HookMissing {
            worker_id: spec.worker_id,
            secret: spec.secret,
        });
    }
}

/// The automatic entry hook: a static constructor that runs before `main` and turns a
/// process started as a worker into one, so that no user code runs in it.
#[cfg(feature = "auto-init")]
#[allow(unsafe_code)]
#[ctor::ctor]
unsafe fn procpool_enter_worker() {
    enter(true);
}

/// A reference to the entry hook, so that linkers keep the object file that holds it.
#[cfg(feature = "auto-init")]
pub(crate) fn entry_hook_address() -> usize {
    procpool_enter_worker as unsafe fn() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let spec = Spec {
            worker_id: 42,
            parent_pid: 1234,
            secret: [0xab; SECRET_LEN],
            word: true,
        };
        assert_eq!(Spec::parse(&spec.encode()), Some(spec.clone()));
        let without = Spec {
            word: false,
            ..spec
        };
        assert_eq!(Spec::parse(&without.encode()), Some(without));
    }

    #[test]
    fn malformed_specs_are_rejected() {
        let secret = "ab".repeat(SECRET_LEN);
        let good = format!("4;1;2;{secret};w");
        assert!(Spec::parse(&good).is_some(), "{good}");
        for bad in [
            String::new(),
            "4".into(),
            good.replacen('4', "3", 1),
            format!("4;x;2;{secret};w"),
            format!("4;1;2;{};w", "zz".repeat(SECRET_LEN)),
            format!("4;1;2;{secret}ab;w"),
            format!("4;1;2;{secret}"),
            format!("4;1;2;{secret};3"),
            format!("4;1;2;{secret};w;"),
        ] {
            assert_eq!(Spec::parse(&bad), None, "{bad:?}");
        }
    }
}
