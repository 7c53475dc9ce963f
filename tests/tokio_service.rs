//! A job submitted from inside a running tokio server: the server keeps answering while
//! the pool works, on a current-thread runtime where any blocking would stall it.

mod common;

use common::*;
use procpool::{ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A line-based server: `ping` answers `pong`; `work <gate>` runs a job on the pool that
/// blocks until the gate opens, then answers `done <pid>`.
async fn serve(listener: TcpListener, pool: Arc<dyn procpool::Executor>) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let pool = pool.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = if line == "ping" {
                    "pong".to_string()
                } else if let Some(gate) = line.strip_prefix("work ") {
                    match pool.submit(wait_for_gate, gate.to_string()).await {
                        Ok(pid) => format!("done {pid}"),
                        Err(e) => format!("error {e}"),
                    }
                } else {
                    "?".to_string()
                };
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
    }
}

async fn request(addr: std::net::SocketAddr, line: String) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await.unwrap();
    reply.trim_end().to_string()
}

async fn keeps_answering_while_the_pool_works(pool: Arc<dyn procpool::Executor>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, pool));
    let gate = Gate::new();
    let work = tokio::spawn(request(addr, format!("work {}", gate.path())));
    for _ in 0..50 {
        assert_eq!(bounded("ping", request(addr, "ping".into())).await, "pong");
    }
    assert!(
        !work.is_finished(),
        "the job is still running: the pings were served meanwhile"
    );
    gate.open();
    let reply = bounded("work", work).await.unwrap();
    assert!(reply.starts_with("done "), "{reply}");
    server.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_server_keeps_answering_while_a_process_job_runs() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    keeps_answering_while_the_pool_works(Arc::new(pool)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_server_keeps_answering_while_a_thread_job_runs() {
    let pool = ThreadPoolExecutor::new(1).unwrap();
    keeps_answering_while_the_pool_works(Arc::new(pool)).await;
}
