//! `PoolStats::record_metrics` and `Health::record_metrics` (feature `metrics`) into a
//! Prometheus recorder, rendered as a scrape would see them.

#[cfg(not(feature = "metrics"))]
#[test]
fn skipped_without_the_metrics_feature() {
    println!("skipped: built without the `metrics` feature (cargo test --features metrics)");
}

#[cfg(feature = "metrics")]
#[test]
fn a_pools_figures_reach_a_prometheus_scrape() {
    use procpool::{Executor, ExecutorExt, ThreadPoolExecutor};
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let pool = ThreadPoolExecutor::new(2).unwrap();
    for i in 0..40_u64 {
        assert_eq!(pool.submit(|x: u64| x + 1, i).wait().unwrap(), i + 1);
    }
    assert!(
        pool.submit(|_: u64| -> u64 { panic!("no") }, 0)
            .wait()
            .is_err()
    );
    metrics::with_local_recorder(&recorder, || {
        pool.stats().record_metrics("cpu");
        pool.health().record_metrics("cpu");
    });
    let text = handle.render();
    for line in [
        "procpool_workers{pool=\"cpu\"} 2",
        "procpool_jobs_completed_total{pool=\"cpu\"} 40",
        "procpool_jobs_failed_total{pool=\"cpu\"} 1",
        "procpool_job_failures_total{pool=\"cpu\",kind=\"panicked\"} 1",
        "procpool_job_failures_total{pool=\"cpu\",kind=\"timed_out\"} 0",
        "procpool_health{pool=\"cpu\",state=\"serving\"} 1",
        "procpool_health{pool=\"cpu\",state=\"broken\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // 41 jobs submitted from this thread: the thread pool timed the 1st, 17th and 33rd.
    assert!(
        text.lines()
            .any(|l| l == "procpool_run_time_seconds_count{pool=\"cpu\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("procpool_queue_wait_seconds{pool=\"cpu\",quantile=\"0.99\"}"),
        "{text}"
    );
}
