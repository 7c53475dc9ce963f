//! Unit tests of the map that need its private state.

use crate::{ExecutorExt, ThreadPoolExecutor};
use futures::StreamExt;
use std::time::Duration;

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_thread_pools_chunks_give_their_argument_vectors_back_for_the_next() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = ThreadPoolExecutor::new(1).unwrap();
        let mut map = pool.map(double, 0..100_u64).chunk_size(10);
        let mut sum = 0;
        futures::executor::block_on(async {
            while let Some(result) = map.next().await {
                sum += result.unwrap();
            }
        });
        let spent: Vec<_> = map.spent.iter().map(|v| (v.len(), v.capacity())).collect();
        tx.send((sum, spent)).unwrap();
    });
    let (sum, spent) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the map did not finish");
    assert_eq!(sum, 9_900);
    assert!(!spent.is_empty(), "no chunk gave its vector back");
    assert!(spent.len() <= super::SPENT_KEPT);
    assert!(
        spent
            .iter()
            .all(|&(len, capacity)| len == 0 && capacity >= 10),
        "{spent:?}"
    );
}
