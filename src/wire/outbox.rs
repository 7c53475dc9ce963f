//! [`Outbox`]: a worker's answers, held back for a moment while its next job is already
//! here, so that one write carries many of them.
//!
//! Writing each answer of a stream of tiny jobs on its own costs the worker a system call
//! per job, which profiles of 100,000 tiny jobs showed as the largest cost of the whole
//! pool (the kernel's send path, about two fifths of all samples). So when a worker has
//! read its next job already, it appends the answer to a buffer instead, and writes the
//! buffer when it would wait for input, when the buffer is full, or at the latest
//! [`HOLD`] after the first answer in it: a thread of the outbox's own writes it then,
//! whatever job the worker is running.
//!
//! A held answer belongs to a job that has ended, and must not be lost if the worker dies
//! in the next job. So every held frame is also written to the journal the worker shares
//! with its pool (see [`SharedWord`]), whose length is published after the frame's bytes;
//! a pool that sees its worker gone reads the frames left there and delivers the answers
//! it had not received (`crate::process::child`), skipping those that did arrive (a
//! worker can die between writing its buffer and clearing the journal).

use crate::sys::{JOURNAL, SharedWord};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long an answer may wait in the outbox at most (give or take the timer slack of a
/// thread's sleep, about 50 µs on Linux).
pub(crate) const HOLD: Duration = Duration::from_micros(50);

/// The largest frame held back. A larger answer is written at once: its system call is
/// already shared by many bytes, and copying it into the journal would cost more than it
/// saves (holding the 9 KB answers of 1,000-item chunks made a map of them a fifth slower).
pub(crate) const MAX_HELD_FRAME: usize = 1024;

/// A worker's held answers and the thread that writes them when they have waited long
/// enough. Dropping it writes what is left and stops the thread.
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    /// The writer thread, started when the first answer is held (a worker that never
    /// holds one, as one running long jobs, starts none): `None` inside if it could not
    /// start, and then nothing is held.
    writer: std::sync::OnceLock<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a first answer is held, and on drop.
    held: Condvar,
    page: Arc<SharedWord>,
    /// How long an answer may wait ([`HOLD`], but for tests).
    hold: Duration,
}

struct State {
    stream: Arc<UnixStream>,
    /// Frames held, also in the journal.
    frames: Vec<u8>,
    /// When the oldest of them was held.
    since: Option<Instant>,
    /// Why the last write failed: every later send fails too.
    broken: Option<io::ErrorKind>,
    stop: bool,
}

impl Outbox {
    /// An outbox writing to `stream` (the worker's link, cloned), journaling in `page`:
    /// `None` if the page has no journal, and then the worker writes each answer at once.
    pub(crate) fn new(stream: Arc<UnixStream>, page: Arc<SharedWord>) -> Option<Outbox> {
        Outbox::holding_for(HOLD, stream, page)
    }

    fn holding_for(
        hold: Duration,
        stream: Arc<UnixStream>,
        page: Arc<SharedWord>,
    ) -> Option<Outbox> {
        page.journal()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stream,
                frames: Vec::with_capacity(JOURNAL),
                since: None,
                broken: None,
                stop: false,
            }),
            held: Condvar::new(),
            page,
            hold,
        });
        Some(Outbox {
            shared,
            writer: std::sync::OnceLock::new(),
        })
    }

    /// Whether the writer thread runs, starting it the first time.
    fn writer_runs(&self) -> bool {
        let writer = self.writer.get_or_init(|| {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("procpool-outbox".into())
                .stack_size(64 * 1024)
                .spawn(move || shared.write_when_due())
                .ok()
        });
        writer.is_some()
    }

    /// Holds `frame` (whole frames, as [`put_frame`](super::frame::put_frame) writes them)
    /// if there is room for it; `false` if not, and then the caller sends it at once
    /// ([`send`](Self::send)).
    pub(crate) fn hold(&self, frame: &[u8]) -> io::Result<bool> {
        if !self.writer_runs() {
            return Ok(false);
        }
        let mut state = self.shared.lock();
        state.check()?;
        let at = state.frames.len();
        if frame.len() > MAX_HELD_FRAME || at + frame.len() > JOURNAL {
            return Ok(false);
        }
        let (length, journal) = self.shared.page.journal().expect("checked in `new`");
        for (cell, &byte) in journal[at..].iter().zip(frame) {
            cell.store(byte, Ordering::Relaxed);
        }
        // Published after its bytes: a pool that reads this length reads whole frames.
        length.store((at + frame.len()) as u64, Ordering::Release);
        state.frames.extend_from_slice(frame);
        if state.since.is_none() {
            state.since = Some(Instant::now());
            self.shared.held.notify_one();
        }
        Ok(true)
    }

    /// Writes the held frames, then `head` and `tail`, in one write where they fit.
    pub(crate) fn send(&self, head: &[u8], tail: &[u8]) -> io::Result<()> {
        let mut state = self.shared.lock();
        state.check()?;
        if !state.frames.is_empty() && head.len() <= MAX_HELD_FRAME {
            // Not journaled: this write is what delivers it.
            state.frames.extend_from_slice(head);
            state.write_out(&self.shared.page)?;
        } else {
            state.write_out(&self.shared.page)?;
            (&*state.stream).write_all(head)?;
        }
        if !tail.is_empty() {
            (&*state.stream).write_all(tail)?;
        }
        Ok(())
    }

    /// Writes the held frames now: the worker is about to wait for input.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut state = self.shared.lock();
        state.check()?;
        state.write_out(&self.shared.page)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread: waits for a held answer, then until it is due, and writes
    /// whatever is held then.
    fn write_when_due(&self) {
        let mut state = self.lock();
        loop {
            if state.stop || state.broken.is_some() {
                return;
            }
            let Some(since) = state.since else {
                state = self
                    .held
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let now = Instant::now();
            let due = since + self.hold;
            if now < due {
                state = self
                    .held
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            // An error is kept for the worker's next send, which reports it.
            let _ = state.write_out(&self.page);
        }
    }
}

impl State {
    fn check(&self) -> io::Result<()> {
        match self.broken {
            Some(kind) => Err(io::Error::new(kind, "an earlier write to the pool failed")),
            None => Ok(()),
        }
    }

    /// Writes the frames held, then clears them and the journal.
    fn write_out(&mut self, page: &SharedWord) -> io::Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let written = (&*self.stream).write_all(&self.frames);
        self.frames.clear();
        self.since = None;
        if let Some((length, _)) = page.journal() {
            length.store(0, Ordering::Release);
        }
        written.inspect_err(|e| self.broken = Some(e.kind()))
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            let _ = state.write_out(&self.shared.page);
            state.stop = true;
        }
        self.shared.held.notify_one();
        if let Some(Some(writer)) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An outbox whose thread writes held answers after `hold`: long, for tests that look
    /// at what is held, so that it never writes them meanwhile.
    fn outbox_holding_for(hold: Duration) -> Option<(Outbox, UnixStream, Arc<SharedWord>)> {
        let page = Arc::new(SharedWord::create(true)?);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let outbox = Outbox::holding_for(hold, Arc::new(ours), page.clone()).expect("a journal");
        Some((outbox, theirs, page))
    }

    fn outbox() -> Option<(Outbox, UnixStream, Arc<SharedWord>)> {
        outbox_holding_for(Duration::from_secs(3600))
    }

    fn journaled(page: &SharedWord) -> Vec<u8> {
        let (length, bytes) = page.journal().unwrap();
        let len = length.load(Ordering::Acquire) as usize;
        bytes[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn held_frames_are_journaled_until_they_are_written_in_one_go() {
        let Some((outbox, mut theirs, page)) = outbox() else {
            return;
        };
        assert!(outbox.hold(b"one").unwrap());
        assert!(outbox.hold(b"two").unwrap());
        assert_eq!(journaled(&page), b"onetwo");
        outbox.send(b"three", b"!").unwrap();
        assert!(journaled(&page).is_empty(), "written: no longer journaled");
        let mut got = [0; 12];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"onetwothree!");
    }

    #[test]
    fn a_held_frame_is_written_by_the_outboxs_thread_when_due() {
        let Some((outbox, mut theirs, page)) = outbox_holding_for(HOLD) else {
            return;
        };
        assert!(outbox.hold(b"late").unwrap());
        // Nothing else happens on this side: only the writer thread can deliver it.
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = [0; 4];
        theirs
            .read_exact(&mut got)
            .expect("written within the bound");
        assert_eq!(&got, b"late");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journaled(&page).is_empty() {
            assert!(Instant::now() < deadline, "the journal was never cleared");
            std::thread::yield_now();
        }
        drop(outbox);
    }

    #[test]
    fn a_frame_that_does_not_fit_is_refused_and_a_full_journal_goes_out_first() {
        let Some((outbox, mut theirs, page)) = outbox() else {
            return;
        };
        assert!(
            !outbox.hold(&[1; MAX_HELD_FRAME + 1]).unwrap(),
            "too large to hold"
        );
        let piece = vec![7; MAX_HELD_FRAME];
        let fit = JOURNAL / MAX_HELD_FRAME;
        for _ in 0..fit {
            assert!(outbox.hold(&piece).unwrap());
        }
        assert_eq!(journaled(&page).len(), JOURNAL);
        assert!(!outbox.hold(b"xyz").unwrap(), "no room left");
        outbox.send(b"xyz", &[]).unwrap();
        assert!(journaled(&page).is_empty());
        let mut got = vec![0; JOURNAL + 3];
        theirs.read_exact(&mut got).unwrap();
        assert!(got[..JOURNAL].iter().all(|&b| b == 7));
        assert_eq!(&got[JOURNAL..], b"xyz");
    }

    #[test]
    fn a_failed_write_fails_every_later_send() {
        let Some((outbox, theirs, _page)) = outbox() else {
            return;
        };
        drop(theirs);
        assert!(outbox.hold(b"x").unwrap());
        assert!(outbox.flush().is_err());
        assert!(outbox.hold(b"y").is_err());
        assert!(outbox.send(b"z", &[]).is_err());
    }
}
