//! `PoolService` (feature `tower`) through tower's own layers: `poll_ready` is the pool's
//! admission (`load_shed` sheds exactly when a bounded pool is full), a dropped future
//! cancels its job (a `timeout` layer kills the running job's worker), `retry` runs a
//! request again when its worker died, `buffer` and `concurrency_limit` compose, and a
//! shut-down pool fails `poll_ready`.

#[cfg(not(feature = "tower"))]
#[test]
fn skipped_without_the_tower_feature() {
    println!("skipped: built without the `tower` feature (cargo test --features tower)");
}

#[cfg(feature = "tower")]
mod common;

#[cfg(feature = "tower")]
mod with_tower {
    use super::common::{self, Gate, bounded, read_pid, wait_for_gate};
    use futures::FutureExt;
    use procpool::{
        Executor, ExecutorExt, JobError, PoolService, ProcessPoolExecutor, ThreadPoolExecutor,
    };
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

    fn bounded_pools(workers: usize, queued: usize) -> Vec<(&'static str, Arc<dyn Executor>)> {
        common::pools_built(workers, |t| t.max_queued(queued), |p| p.max_queued(queued))
            .into_iter()
            .map(|(name, pool)| (name, Arc::from(pool)))
            .collect()
    }

    fn report_pid_then_wait(files: (String, String)) -> u32 {
        common::report_pid_then_wait(files)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_runs_the_function_on_either_pool() {
        for (name, pool) in common::pools(2) {
            let pool: Arc<dyn Executor> = Arc::from(pool);
            let service = PoolService::new(pool.clone(), common::double);
            let doubled = bounded("oneshot", service.clone().oneshot(21))
                .await
                .unwrap();
            assert_eq!(doubled, 42, "{name}");
            drop(service);
            let panics = PoolService::new(pool.clone(), common::fail_on_seven);
            let error = bounded("a panicking job", panics.oneshot(7))
                .await
                .unwrap_err();
            assert!(error.is_panic(), "{name}: {error}");
        }
    }

    /// The docs: once the pool is shut down, `poll_ready` fails with `ShutDown`, also for
    /// a service that had reserved room before. (It said ready, found by a review.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poll_ready_fails_after_shutdown_even_with_room_reserved() {
        for (name, pool) in bounded_pools(1, 1) {
            let mut service = PoolService::new(pool.clone(), common::double);
            bounded("ready", service.ready()).await.unwrap();
            pool.begin_shutdown(false);
            let again = bounded("ready after shutdown", service.ready())
                .await
                .map(|_| ());
            assert_eq!(again, Err(JobError::ShutDown), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poll_ready_waits_for_room_and_load_shed_sheds_when_full() {
        for (name, pool) in bounded_pools(1, 0) {
            let gate = Gate::new();
            let mut service = PoolService::new(pool.clone(), wait_for_gate);
            bounded("ready", service.ready()).await.unwrap();
            let running = service.call(gate.path());
            // The one slot is taken: readiness waits.
            let mut other = service.clone();
            assert!(
                other.ready().now_or_never().is_none(),
                "{name}: ready while full"
            );
            let mut shed = ServiceBuilder::new()
                .load_shed()
                .service(PoolService::new(pool.clone(), common::double));
            let refused: Result<u64, BoxError> = shed.ready().await.unwrap().call(1).await;
            let refused = refused.unwrap_err();
            assert!(
                refused.is::<tower::load_shed::error::Overloaded>(),
                "{name}: {refused}"
            );
            gate.open();
            bounded("the running job", running).await.unwrap();
            // Room came back: both are served now.
            bounded("ready again", other.ready()).await.unwrap();
            let job = other.call(gate.path());
            bounded("other's job", job).await.unwrap();
            let doubled = bounded("shed's job", shed.ready().await.unwrap().call(4)).await;
            assert_eq!(doubled.unwrap(), 8, "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_layer_kills_the_job_it_gives_up_on() {
        let pool = ProcessPoolExecutor::new(1).unwrap();
        let gate = Gate::new();
        let pid_file = gate.sibling("pid");
        let mut service = ServiceBuilder::new()
            .timeout(Duration::from_millis(300))
            .service(PoolService::new(pool.clone(), report_pid_then_wait));
        let call = service
            .ready()
            .await
            .unwrap()
            .call((pid_file.clone(), gate.path()));
        let waited = tokio::spawn(call);
        let pid = tokio::task::spawn_blocking(move || read_pid(&pid_file) as u32)
            .await
            .unwrap();
        let error = bounded("the timed-out call", waited)
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
        // The gate never opens: only the cancellation can have ended the worker.
        tokio::task::spawn_blocking(move || common::wait_until_gone(pid, "runs on for nobody"))
            .await
            .unwrap();
        let next = bounded("after", pool.submit(common::pid, ()))
            .await
            .unwrap();
        assert_ne!(next, pid, "a new worker");
        pool.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffer_and_concurrency_limit_compose_with_it() {
        let pool = ThreadPoolExecutor::builder()
            .max_workers(2)
            .max_queued(2)
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .buffer(16)
            .concurrency_limit(3)
            .service(PoolService::new(pool.clone(), common::double));
        let calls = (0..200_u64).map(|i| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(i).await })
        });
        let mut sum = 0;
        for call in calls {
            sum += bounded("a buffered call", call).await.unwrap().unwrap();
        }
        assert_eq!(sum, 2 * (0..200).sum::<u64>());
        assert!(pool.stats().jobs_completed >= 200);
    }

    /// Aborts its worker the first time (no mark yet), answers `x` the next.
    fn abort_once((mark, x): (String, u64)) -> u64 {
        if !std::path::Path::new(&mark).exists() {
            std::fs::write(&mark, b"died once").unwrap();
            std::process::abort();
        }
        x
    }

    /// Retries a request once when its worker died, as a pure function allows.
    #[derive(Clone)]
    struct OnceOnWorkerDeath(u32);

    impl<Req: Clone, Res> tower::retry::Policy<Req, Res, JobError> for OnceOnWorkerDeath {
        type Future = std::future::Ready<()>;

        fn retry(
            &mut self,
            _: &mut Req,
            result: &mut Result<Res, JobError>,
        ) -> Option<Self::Future> {
            match result {
                Err(error) if error.is_worker_died() && self.0 > 0 => {
                    self.0 -= 1;
                    Some(std::future::ready(()))
                }
                _ => None,
            }
        }

        fn clone_request(&mut self, request: &Req) -> Option<Req> {
            Some(request.clone())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_layer_runs_a_request_again_when_its_worker_died() {
        let pool = ProcessPoolExecutor::new(1).unwrap();
        let gate = Gate::new();
        let mark = gate.sibling("died");
        let retried = ServiceBuilder::new()
            .retry(OnceOnWorkerDeath(1))
            .service(PoolService::new(pool.clone(), abort_once));
        let answer = bounded("a retried request", retried.oneshot((mark.clone(), 7))).await;
        assert_eq!(answer.unwrap(), 7);
        assert!(
            std::path::Path::new(&mark).exists(),
            "the first attempt never ran"
        );
        assert_eq!(pool.stats().respawns, 1, "the first attempt's worker died");
        // Without the layer, the same death fails the request.
        std::fs::remove_file(&mark).unwrap();
        let plain = PoolService::new(pool.clone(), abort_once);
        let error = bounded("a plain request", plain.oneshot((mark, 7)))
            .await
            .unwrap_err();
        assert!(error.is_worker_died(), "{error}");
        pool.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shut_down_pool_fails_poll_ready() {
        for (name, pool) in bounded_pools(1, 1)
            .into_iter()
            .chain(common::pools(1).into_iter().map(|(n, p)| (n, Arc::from(p))))
        {
            let mut service = PoolService::new(pool.clone(), common::double);
            pool.begin_shutdown(false);
            let error = bounded("ready after shutdown", service.ready())
                .await
                .unwrap_err();
            assert_eq!(error, JobError::ShutDown, "{name}");
        }
    }
}
