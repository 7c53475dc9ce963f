//! The floor of the reference workloads: what two processes can do over a bare Unix stream
//! socket. The peer is this same program, started again with [`ECHO_ENV`] set; it echoes
//! each message (a `u64` LE length, then that many bytes). Shared by the benches and the
//! `thread_vs_process` example.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

/// Set on the echo child: the socket to connect to.
pub const ECHO_ENV: &str = "PROCPOOL_BENCH_ECHO";

/// If this process is an echo child, serves until the socket closes and exits; otherwise
/// returns. Call it first thing in `main`.
pub fn serve_if_echo_child() {
    let Ok(socket) = std::env::var(ECHO_ENV) else {
        return;
    };
    let Ok(mut stream) = UnixStream::connect(&socket) else {
        std::process::exit(1);
    };
    let mut buf = Vec::new();
    loop {
        let mut len = [0_u8; 8];
        if stream.read_exact(&mut len).is_err() {
            std::process::exit(0);
        }
        let n = u64::from_le_bytes(len) as usize;
        buf.resize(8 + n, 0);
        if stream.read_exact(&mut buf[8..]).is_err() {
            std::process::exit(1);
        }
        buf[..8].copy_from_slice(&len);
        // One write, so that the reply is one wake-up.
        if stream.write_all(&buf).is_err() {
            std::process::exit(0);
        }
        buf.truncate(8);
    }
}

/// A listening socket that echo children connect to.
pub struct Floor {
    _dir: tempfile::TempDir,
    pub listener: UnixListener,
    socket: String,
}

impl Floor {
    pub fn new() -> std::io::Result<Floor> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("floor.sock").to_string_lossy().into_owned();
        let listener = UnixListener::bind(&socket)?;
        Ok(Floor {
            _dir: dir,
            listener,
            socket,
        })
    }

    /// Starts an echo child (it connects by itself).
    pub fn spawn(&self) -> std::io::Result<Child> {
        Command::new(std::env::current_exe()?)
            .env(ECHO_ENV, &self.socket)
            .stdin(Stdio::null())
            .spawn()
    }

    /// Starts an echo child and accepts its connection.
    pub fn peer(&self) -> std::io::Result<(Child, UnixStream)> {
        let child = self.spawn()?;
        let (stream, _) = self.listener.accept()?;
        Ok((child, stream))
    }
}

/// Sends `payload` and reads the echo into `back`.
pub fn round_trip(
    stream: &mut UnixStream,
    payload: &[u8],
    back: &mut Vec<u8>,
) -> std::io::Result<()> {
    let header = (payload.len() as u64).to_le_bytes();
    if payload.len() <= 4096 {
        // Small messages go in one write: the floor is the best a bare socket can do.
        let mut message = [0_u8; 8 + 4096];
        message[..8].copy_from_slice(&header);
        message[8..8 + payload.len()].copy_from_slice(payload);
        stream.write_all(&message[..8 + payload.len()])?;
    } else {
        stream.write_all(&header)?;
        stream.write_all(payload)?;
    }
    let mut len = [0_u8; 8];
    stream.read_exact(&mut len)?;
    back.resize(u64::from_le_bytes(len) as usize, 0);
    stream.read_exact(back)
}

/// Kills and reaps an echo child.
pub fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `criterion_main!` for benches that compare with the floor: the bench binary is also
/// the echo child, so `main` checks for that first.
#[macro_export]
macro_rules! criterion_main_with_floor {
    ($group:ident) => {
        fn main() {
            $crate::floor::serve_if_echo_child();
            $group();
            criterion::Criterion::default()
                .configure_from_args()
                .final_summary();
        }
    };
}
