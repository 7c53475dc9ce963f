//! Blocking the current thread on a future, with a waker that needs no thread-local:
//! `futures::executor::block_on` keeps its parker in one, which is gone in a
//! thread-local's destructor, where a job may still be submitted and waited for.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Set by a wake-up, cleared by the thread that waits for one.
#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    changed: Condvar,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_one();
    }
}

/// Runs `future` to completion on this thread, sleeping while it is pending.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    // A future that is ready at once costs no allocation.
    if let Poll::Ready(output) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return output;
    }
    let signal = Arc::new(Signal::default());
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let mut woken = signal.woken.lock().unwrap_or_else(PoisonError::into_inner);
        while !*woken {
            woken = signal
                .changed
                .wait(woken)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *woken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_and_one_woken_from_another_thread() {
        assert_eq!(block_on(async { 7 }), 7);
        let (tx, rx) = futures::channel::oneshot::channel();
        let sender = std::thread::spawn(move || tx.send(5).unwrap());
        assert_eq!(block_on(rx), Ok(5));
        sender.join().unwrap();
    }
}
