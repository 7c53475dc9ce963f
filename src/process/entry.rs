//! How a process learns it is a worker: one environment variable, set by the pool when it
//! starts the process, read by the entry hook before `main` (or by [`crate::init`]).

use super::protocol::SECRET_LEN;
use std::path::PathBuf;

/// The variable a pool sets on the processes it starts.
pub(crate) const WORKER_ENV: &str = "PROCPOOL_WORKER";
const SPEC_VERSION: &str = "1";

/// What a worker needs to reach its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) worker_id: u64,
    pub(crate) parent_pid: u32,
    pub(crate) secret: [u8; SECRET_LEN],
    pub(crate) socket: PathBuf,
}

impl Spec {
    /// `1;<worker id>;<parent pid>;<secret hex>;<socket path>` (the path last: it may hold
    /// any character but NUL).
    pub(crate) fn encode(&self) -> String {
        let secret: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{SPEC_VERSION};{};{};{secret};{}",
            self.worker_id,
            self.parent_pid,
            self.socket.display()
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
        let socket = PathBuf::from(fields.next()?);
        Some(Spec {
            worker_id,
            parent_pid,
            secret,
            socket,
        })
    }
}

/// `true` if this process was started by a pool as a worker.
pub(crate) fn is_worker_process() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// The worker spec from the environment, if this process was started as a worker.
pub(crate) fn take_spec() -> Option<Spec> {
    let value = std::env::var_os(WORKER_ENV)?;
    Spec::parse(value.to_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_with_odd_paths() {
        let spec = Spec {
            worker_id: 42,
            parent_pid: 1234,
            secret: [0xab; SECRET_LEN],
            socket: PathBuf::from("/tmp/a;b c/pool.sock"),
        };
        assert_eq!(Spec::parse(&spec.encode()), Some(spec));
    }

    #[test]
    fn malformed_specs_are_rejected() {
        for bad in ["", "1", "2;1;1;00;/x", "1;x;1;00;/x", "1;1;1;zz;/x"] {
            assert_eq!(Spec::parse(bad), None, "{bad:?}");
        }
    }
}
