//! The pool's figures through the [`metrics`] facade (feature `metrics`): whatever
//! recorder the application installed (Prometheus, StatsD, OpenTelemetry...) receives
//! them, under the names below, labelled with the pool's name.

use crate::stats::{Health, PoolStats};
use crate::timing::DurationSummary;

impl PoolStats {
    /// Hands this snapshot to the installed `metrics` recorder, labelled `pool = name`;
    /// with no recorder installed it costs next to nothing. Call it where the metrics are
    /// read (a scrape handler) or on a timer.
    ///
    /// | metric | kind | what |
    /// |---|---|---|
    /// | `procpool_workers` | gauge | [`max_workers`](PoolStats::max_workers) |
    /// | `procpool_workers_alive` / `procpool_workers_busy` | gauge | workers up, workers running a job |
    /// | `procpool_jobs_queued` / `procpool_jobs_running` | gauge | jobs waiting, jobs running |
    /// | `procpool_jobs_completed_total` / `procpool_jobs_failed_total` | counter | jobs that ended well, with an error |
    /// | `procpool_job_failures_total`, `kind` = `panicked`, `worker_died`, `timed_out`... | counter | [`failures`](PoolStats::failures), by kind (the names of [`FailureCounts`](crate::FailureCounts)'s fields) |
    /// | `procpool_worker_respawns_total` | counter | workers started to replace one |
    /// | `procpool_queue_wait_seconds` / `procpool_run_time_seconds` | gauge, `quantile` = `0.5`, `0.9`, `0.99`, `1` | the [`queue_wait`](PoolStats::queue_wait) and [`run_time`](PoolStats::run_time) summaries (`1` is the largest) |
    /// | `procpool_queue_wait_seconds_count` / `..._sum`, `procpool_run_time_seconds_count` / `..._sum` | counter, gauge | how many were timed, and their total |
    ///
    /// # Examples
    ///
    /// ```
    /// use procpool::{Executor, ExecutorExt, ThreadPoolExecutor};
    ///
    /// let pool = ThreadPoolExecutor::new(2)?;
    /// pool.submit(|x: u32| x + 1, 1).wait()?;
    /// pool.stats().record_metrics("cpu"); // e.g. in a /metrics handler, before rendering
    /// # Ok::<(), procpool::Error>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self, name: &str) {
        let pool = name.to_owned();
        let gauge = |metric: &'static str, value: usize| {
            metrics::gauge!(metric, "pool" => pool.clone()).set(value as f64);
        };
        gauge("procpool_workers", self.max_workers);
        gauge("procpool_workers_alive", self.workers_alive);
        gauge("procpool_workers_busy", self.workers_busy);
        gauge("procpool_jobs_queued", self.jobs_queued);
        gauge("procpool_jobs_running", self.jobs_running);
        let counter = |metric: &'static str, value: u64| {
            metrics::counter!(metric, "pool" => pool.clone()).absolute(value);
        };
        counter("procpool_jobs_completed_total", self.jobs_completed);
        counter("procpool_jobs_failed_total", self.jobs_failed);
        counter("procpool_worker_respawns_total", self.respawns);
        for (kind, count) in self.failures.kinds() {
            metrics::counter!("procpool_job_failures_total", "pool" => pool.clone(), "kind" => kind)
                .absolute(count);
        }
        record_summary("procpool_queue_wait_seconds", &pool, &self.queue_wait);
        record_summary("procpool_run_time_seconds", &pool, &self.run_time);
    }
}

impl Health {
    /// Hands the health to the installed `metrics` recorder as `procpool_health`, a gauge
    /// labelled `pool = name` and `state` (`serving`, `restarting`, `broken`,
    /// `shut_down`) that is 1 for the current state and 0 for the others.
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self, name: &str) {
        let current = match self {
            Health::Serving => "serving",
            Health::Restarting { .. } => "restarting",
            Health::Broken { .. } => "broken",
            Health::ShutDown => "shut_down",
        };
        for state in ["serving", "restarting", "broken", "shut_down"] {
            metrics::gauge!("procpool_health", "pool" => name.to_owned(), "state" => state)
                .set(if state == current { 1.0 } else { 0.0 });
        }
    }
}

/// A summary as Prometheus spells one: quantile gauges, `_count` and `_sum`.
fn record_summary(metric: &'static str, pool: &str, summary: &DurationSummary) {
    for (quantile, value) in [
        ("0.5", summary.p50),
        ("0.9", summary.p90),
        ("0.99", summary.p99),
        ("1", summary.max),
    ] {
        metrics::gauge!(metric, "pool" => pool.to_owned(), "quantile" => quantile)
            .set(value.as_secs_f64());
    }
    metrics::counter!(format!("{metric}_count"), "pool" => pool.to_owned()).absolute(summary.count);
    let total = summary.mean.as_secs_f64() * summary.count as f64;
    metrics::gauge!(format!("{metric}_sum"), "pool" => pool.to_owned()).set(total);
}
