//! Giving a worker up: what its running job ends with, what it answered before it went,
//! and the jobs it never started, which go back to the queue.

use super::{BROKEN_GRACE, Loss, Next, Serving};
use crate::error::JobError;
use crate::pool::backend::{Backend, Received, WorkerLink};
use crate::pool::core::QueuedJob;
use crate::pool::exit_within;
use crate::run::Outcome;
use crate::wire::frame::Frame;
use crate::wire::message::FromWorker;
use std::time::Instant;

impl<B: Backend> Serving<'_, B> {
    /// Gives the worker up: its running job (if any) ends with the error `loss` implies;
    /// the jobs behind it never started and go back to the queue.
    ///
    /// What it answered before it went completes first, also when the pool stops it: a
    /// worker frozen (or descheduled) with answers still held in its outbox has the
    /// pool's head among them, whose deadline may be what stopped it. Those answers must
    /// not fail, nor their jobs run again. The job it was running then, one it had
    /// claimed, is the one the loss ends, not one that never started.
    pub(super) async fn lose(&mut self, loss: Loss) -> Next {
        match &loss {
            Loss::Killed => {
                self.link.kill().await;
                self.line.fail_all(JobError::ShutDown);
                return Next::Stop;
            }
            // Killed first, so that its link ends: what it delivers then is all there is.
            Loss::Stopped { .. } => drop(self.link.kill().await),
            Loss::Exited(_) | Loss::Broken(_) => {}
        }
        self.take_last_answers().await;
        if self.line.head_id().is_none()
            && let Some(first) = self.line.first_id()
            && self.link.started(first) == Some(true)
        {
            self.line.promote(Instant::now()); // it ran: it does not go back to the queue
        }
        let (slot, worker, idle) = (self.slot, self.id, self.line.is_empty());
        // A worker that ends before it has answered a job is a failed start, with its
        // back-off: one killed by its own initializer would otherwise be replaced at
        // once, again and again.
        let unused = self.tasks == 0;
        let error = match loss {
            Loss::Killed => unreachable!("handled above"),
            Loss::Exited(exit) if idle && unused => {
                tracing::warn!(slot, %worker, %exit, "worker exited before it ran a job");
                return Next::Failed(format!(
                    "worker {worker} exited before it ran a job: {exit}"
                ));
            }
            Loss::Exited(exit) if idle => {
                tracing::warn!(slot, %worker, %exit, "idle worker exited");
                return Next::Respawn;
            }
            Loss::Exited(exit) => JobError::WorkerDied {
                exit,
                attempts: self.line.head_attempts(),
            },
            Loss::Broken(error) if idle => {
                let error = crate::error::report(&error);
                tracing::warn!(slot, %worker, %error, "lost an idle worker");
                self.link.kill().await;
                if unused {
                    return Next::Failed(format!(
                        "lost worker {worker} before it ran a job: {error}"
                    ));
                }
                return Next::Respawn;
            }
            // A reset or a frame cut short is what a death looks like from here: the
            // worker usually has exited already.
            Loss::Broken(error) => {
                match exit_within(self.link.exited(), &self.core.kill, BROKEN_GRACE).await {
                    Some(exit) => JobError::WorkerDied {
                        exit,
                        attempts: self.line.head_attempts(),
                    },
                    None => {
                        self.link.kill().await;
                        error
                    }
                }
            }
            Loss::Stopped { error, why } => {
                match &error {
                    JobError::Cancelled => tracing::info!(slot, %worker, "{why}"),
                    other => {
                        let error = crate::error::report(other);
                        tracing::warn!(slot, %worker, %error, "{why}");
                    }
                }
                error
            }
        };
        let mut again = Vec::new();
        if let JobError::WorkerDied { exit, .. } = &error {
            let jobs = self.line.len();
            tracing::warn!(slot, %worker, %exit, jobs, "worker died while running a job");
            if let Some(job) = self.line.retry_head() {
                tracing::info!(slot, attempts = job.attempts, "running the job again");
                again.push(job);
            }
        }
        self.line.fail_head(error);
        again.extend(self.line.take_waiting());
        self.requeue(again);
        Next::Respawn
    }

    /// Completes the jobs a worker that is gone answered before it went, and that are not
    /// read yet (a failed write can be how its death is first seen), with what its link
    /// still delivers: frames in flight, then the answers left in its journal.
    async fn take_last_answers(&mut self) {
        // What completing answers read past them: a job taken back, skipped, after which
        // the answers go on.
        let mut carried = None;
        while !self.line.is_empty() {
            let received = match carried.take() {
                Some(received) => received,
                None => match tokio::time::timeout(BROKEN_GRACE, self.link.recv()).await {
                    Ok(received) => received,
                    Err(_) => return,
                },
            };
            let Received::Frame(Frame {
                message: FromWorker::Done { id, outcome },
                payload,
            }) = received
            else {
                return;
            };
            if matches!(outcome, Outcome::Revoked) && self.revoked.skipped(id) {
                continue; // a job taken back, skipped: answers go on after it
            }
            if self.line.head_id() != Some(id) {
                return;
            }
            carried = self.complete(outcome, payload);
        }
    }

    /// Puts jobs that never started back at the front of the queue, in order.
    fn requeue(&self, jobs: Vec<QueuedJob>) {
        if !jobs.is_empty() {
            tracing::debug!(
                jobs = jobs.len(),
                "requeued jobs a lost worker never started"
            );
            self.core.queue.requeue_front(jobs);
        }
    }
}
