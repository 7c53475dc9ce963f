//! Shared arrays through the public API, on both pools: many jobs read one input and
//! write disjoint parts of one output; a large input travels as a handle; a buffer a job
//! returns is the same memory; a worker that dies holding a segment fails alone; and no
//! segment outlives its holders, also when the pool's parent is SIGKILLed.

mod common;

use common::*;
use procpool::{ExecutorExt, JobError, ProcessPoolExecutor, SharedBuffer, SharedSlice};
use std::time::{Duration, Instant};

/// Writes the squares of `input[start..end]` into `output` (a part of that length), and
/// returns how many it wrote.
fn squares(
    (input, output, start, end): (SharedSlice<f64>, SharedBuffer<f64>, usize, usize),
) -> usize {
    let part: Vec<f64> = input[start..end].iter().map(|x| x * x).collect();
    output.write(0, &part);
    part.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_read_one_input_and_write_disjoint_parts_on_both_pools() {
    const N: usize = 1 << 20;
    const PARTS: usize = 16;
    let values: Vec<f64> = (0..N).map(|i| i as f64 * 0.5).collect();
    for (name, pool) in pools(2) {
        let input = SharedSlice::from_slice(&values).unwrap();
        let output = SharedBuffer::<f64>::zeroed(N).unwrap();
        let jobs: Vec<_> = (0..PARTS)
            .map(|p| {
                let (start, end) = (N * p / PARTS, N * (p + 1) / PARTS);
                (input.clone(), output.slice(start..end), start, end)
            })
            .collect();
        let mut results = pool.map(squares, jobs);
        let mut written = 0;
        while let Some(result) = bounded(name, futures::StreamExt::next(&mut results)).await {
            written += result.unwrap();
        }
        assert_eq!(written, N, "{name}");
        let got = output.to_vec();
        for (i, (x, y)) in values.iter().zip(&got).enumerate() {
            assert_eq!((x * x).to_bits(), y.to_bits(), "{name}: element {i}");
        }
        bounded(name, pool.shutdown()).await;
    }
}

fn byte_sum(bytes: SharedSlice<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fn vec_byte_sum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[tokio::test]
async fn a_large_input_travels_as_a_handle_not_as_its_bytes() {
    // Frames of at most 64 KiB: 8 MiB of bytes cannot travel in one, a handle can.
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .max_frame_size(64 << 10)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let expected: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let shared = SharedSlice::from_slice(&data).unwrap();
    let sum = bounded("the shared sum", pool.submit(byte_sum, shared.clone())).await;
    assert_eq!(sum.unwrap(), expected);
    let tail = bounded("a part", pool.submit(byte_sum, shared.slice(8 << 19..))).await;
    assert_eq!(
        tail.unwrap(),
        data[8 << 19..].iter().map(|&b| u64::from(b)).sum()
    );
    // The same bytes as a plain argument do not fit: the test can tell the two apart.
    let plain = bounded("the plain sum", pool.submit(vec_byte_sum, data)).await;
    assert!(matches!(plain, Err(JobError::TooLarge { .. })), "{plain:?}");
    bounded("shutdown", pool.shutdown()).await;
}

/// Sets element 0 of `buffer` to 42 and gives it back.
fn mark_and_return(buffer: SharedBuffer<u64>) -> SharedBuffer<u64> {
    buffer.set(0, 42);
    buffer
}

/// Makes a new shared array in the worker.
fn make_in_worker(n: u32) -> SharedSlice<u32> {
    SharedSlice::from_slice(&(0..n).collect::<Vec<_>>()).unwrap()
}

#[tokio::test]
async fn a_buffer_a_job_returns_is_the_same_memory_and_one_it_made_is_a_copy() {
    for (name, pool) in pools(1) {
        let buffer = SharedBuffer::<u64>::zeroed(4).unwrap();
        let back = bounded(name, pool.submit(mark_and_return, buffer.clone())).await;
        let back = back.unwrap();
        assert_eq!(
            buffer.get(0),
            Some(42),
            "{name}: the job wrote the caller's memory"
        );
        buffer.set(3, 7);
        assert_eq!(
            back.get(3),
            Some(7),
            "{name}: the returned buffer is the same memory"
        );
        let made = bounded(name, pool.submit(make_in_worker, 1000))
            .await
            .unwrap();
        assert_eq!(&made[..], &(0..1000).collect::<Vec<u32>>()[..], "{name}");
        bounded(name, pool.shutdown()).await;
    }
}

/// The sum of the buffer's elements.
fn buffer_sum(buffer: SharedBuffer<u64>) -> u64 {
    buffer.to_vec().iter().sum()
}

#[tokio::test]
async fn buffers_a_map_returns_arrive_though_the_caller_kept_none() {
    // The map's chunks of two items decode their results after the chunk's answer has
    // come back: the segments its arguments named must be held until then.
    for (name, pool) in pools(2) {
        let buffers = (0..8).map(|_| SharedBuffer::<u64>::zeroed(4).unwrap());
        let back = pool.map(mark_and_return, buffers).chunk_size(2);
        let back: Vec<_> = bounded(name, futures::StreamExt::collect(back)).await;
        assert_eq!(back.len(), 8, "{name}");
        for (i, buffer) in back.into_iter().enumerate() {
            match buffer {
                Ok(buffer) => assert_eq!(buffer.to_vec(), [42, 0, 0, 0], "{name}: item {i}"),
                Err(error) => panic!("{name}: item {i}: {error}"),
            }
        }
        bounded(name, pool.shutdown()).await;
    }
}

/// A buffer a job keeps for a later one, which returns it ([`unstash`]).
static STASH: std::sync::Mutex<Option<SharedBuffer<u64>>> = std::sync::Mutex::new(None);

/// Marks the buffer as [`mark_and_return`] does, and keeps it.
fn mark_and_stash(buffer: SharedBuffer<u64>) {
    buffer.set(0, 42);
    *STASH.lock().unwrap() = Some(buffer);
}

fn unstash(_: ()) -> SharedBuffer<u64> {
    STASH.lock().unwrap().take().expect("a stashed buffer")
}

#[tokio::test]
async fn a_returned_buffer_travels_again_once_the_original_is_dropped() {
    // Returned by a later job than the one it was sent to, the buffer is opened again
    // here, by its creator, rather than shared with the job's argument.
    for (name, pool) in pools(1) {
        let original = SharedBuffer::<u64>::zeroed(4).unwrap();
        let stashed = bounded(name, pool.submit(mark_and_stash, original.clone())).await;
        assert_eq!(stashed, Ok(()), "{name}");
        let back = bounded(name, pool.submit(unstash, ())).await;
        let back = back.unwrap();
        drop(original);
        let sum = bounded(name, pool.submit(buffer_sum, back.clone())).await;
        assert_eq!(sum.ok(), Some(42), "{name}: after the original was dropped");
        // A new segment takes the lowest free descriptor: the one the original had.
        let other = SharedBuffer::<u64>::zeroed(4).unwrap();
        other.set(0, 1000);
        back.set(1, 8);
        let sum = bounded(name, pool.submit(buffer_sum, back.clone())).await;
        assert_eq!(
            sum.ok(),
            Some(50),
            "{name}: with another segment made since"
        );
        let sum = bounded(name, pool.submit(buffer_sum, other)).await;
        assert_eq!(sum.ok(), Some(1000), "{name}: the other segment");
        bounded(name, pool.shutdown()).await;
    }
}

#[tokio::test]
async fn a_returned_buffer_shares_the_segment_it_was_sent_as() {
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let buffer = SharedBuffer::<u64>::zeroed(1 << 12).unwrap();
    let name = segment_name(&buffer);
    let here = std::process::id();
    let mine = || {
        holders_of(&name)
            .iter()
            .filter(|(pid, _)| *pid == here)
            .count()
    };
    let maps = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().filter(|line| line.contains(&name)).count()
    };
    assert_eq!((mine(), maps()), (1, 1), "before the job");
    let back = bounded("a job", pool.submit(mark_and_return, buffer.clone())).await;
    let back = back.unwrap();
    assert_eq!(
        (mine(), maps()),
        (1, 1),
        "descriptors and mappings of {name} here, with the returned buffer alive"
    );
    // And in a map, whose chunks decode their items later.
    let buffers: Vec<_> = (0..4).map(|_| buffer.clone()).collect();
    let all = pool.map(mark_and_return, buffers).chunk_size(2);
    let all: Vec<_> = bounded("a map", futures::StreamExt::collect(all)).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!((mine(), maps()), (1, 1), "with the map's buffers alive");
    drop((back, all));
    bounded("shutdown", pool.shutdown()).await;
}

/// Travels as a shared array of `u64`s, which cannot be read as the `u32`s it decodes
/// as; its `Deserialize` swallows that failure.
#[derive(Debug)]
struct Lenient(Option<SharedSlice<u32>>);

impl serde::Serialize for Lenient {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let slice = SharedSlice::from_slice(&[1_u64]).map_err(serde::ser::Error::custom)?;
        slice.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Lenient(SharedSlice::deserialize(deserializer).ok()))
    }
}

/// Serializes; its `Deserialize` fails, with a reason of its own.
#[derive(Debug, serde::Serialize)]
struct Refused;

impl<'de> serde::Deserialize<'de> for Refused {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("refused"))
    }
}

fn make_lenient(_: ()) -> Lenient {
    Lenient(None)
}

fn make_refused(_: ()) -> Refused {
    Refused
}

#[tokio::test]
async fn a_swallowed_shared_array_failure_does_not_explain_a_later_error() {
    let pool = ProcessPoolExecutor::builder()
        .max_workers(1)
        .build()
        .unwrap();
    // Decoded on this thread, as the next result is.
    let lenient = bounded("lenient", pool.submit(make_lenient, ())).await;
    assert!(matches!(lenient, Ok(Lenient(None))), "{lenient:?}");
    match bounded("refused", pool.submit(make_refused, ())).await {
        Err(JobError::Decode(why)) => assert!(!why.contains("shared array"), "{why}"),
        other => panic!("{other:?}"),
    }
    bounded("shutdown", pool.shutdown()).await;
}

/// Reads the slice, then dies the way a wild pointer would make it.
fn read_then_abort(input: SharedSlice<u64>) -> u64 {
    if input[0] == 1 {
        std::process::abort();
    }
    input.iter().sum()
}

#[tokio::test]
async fn a_worker_that_dies_holding_a_segment_fails_alone() {
    let pool = ProcessPoolExecutor::new(2).unwrap();
    let doomed = SharedSlice::from_slice(&[1_u64, 2, 3]).unwrap();
    let fine = SharedSlice::from_slice(&[5_u64, 6, 7]).unwrap();
    let crashed = bounded("the crash", pool.submit(read_then_abort, doomed.clone())).await;
    assert!(
        matches!(crashed, Err(JobError::WorkerDied { .. })),
        "{crashed:?}"
    );
    for _ in 0..4 {
        let sum = bounded(
            "after the crash",
            pool.submit(read_then_abort, fine.clone()),
        )
        .await;
        assert_eq!(sum.unwrap(), 18);
    }
    assert_eq!(&doomed[..], &[1, 2, 3], "the caller's copy is untouched");
    bounded("shutdown", pool.shutdown()).await;
}

/// The processes (pid, descriptor) that hold a descriptor of the segment `name`, read from
/// every `/proc/<pid>/fd` this process may read.
fn holders_of(name: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.to_string_lossy().contains(name)
            {
                found.push((pid, fd.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    found
}

/// The processes that map the segment `name`.
fn mappers_of(name: &str) -> Vec<u32> {
    let maps = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(name))
    };
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = pids.filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok());
    pids.filter(|&pid| maps(pid)).collect()
}

/// The name of the segment `value` lives in, from its `Debug`.
fn segment_name(value: &impl std::fmt::Debug) -> String {
    let debug = format!("{value:?}");
    let start = debug.find("procpool-shm-").expect("the segment's name");
    debug[start..].trim_end_matches(['"', ' ', '}']).to_owned()
}

/// Holds `input` until `gate` opens.
fn hold_until((input, gate): (SharedSlice<u64>, String)) -> u64 {
    wait_for_gate(gate);
    input.iter().sum()
}

#[tokio::test]
async fn a_segment_is_freed_once_its_last_holder_lets_go() {
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let input = SharedSlice::from_slice(&[1_u64; 1000]).unwrap();
    let name = segment_name(&input);
    let gate = Gate::new();
    let job = pool.submit(hold_until, (input.clone(), gate.path()));
    // The caller holds the segment's one descriptor here (a worker that opens it holds
    // one only until it has mapped it).
    let here = || {
        let me = std::process::id();
        holders_of(&name)
            .iter()
            .filter(|(pid, _)| *pid == me)
            .count()
    };
    assert_eq!(here(), 1, "one descriptor, the caller's");
    drop(input); // the pool holds what the job's argument names
    assert_eq!(here(), 1, "the pool holds it for the job");
    gate.open();
    assert_eq!(bounded("the job", job).await.unwrap(), 1000);
    let deadline = Instant::now() + BOUND;
    while !holders_of(&name).is_empty() || !mappers_of(&name).is_empty() {
        assert!(Instant::now() < deadline, "{name} outlived its job");
        std::thread::sleep(Duration::from_millis(5));
    }
    bounded("shutdown", pool.shutdown()).await;
}

/// Run by the test below as a process of its own: holds a segment in a running job, says
/// so, and waits to be SIGKILLed.
#[tokio::test]
async fn child_probe_hold_a_segment_until_killed() {
    let Some(dir) = std::env::var_os("PROCPOOL_TEST_SHM_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let pool = ProcessPoolExecutor::new(1).unwrap();
    let input = SharedSlice::from_slice(&[1_u64; 1 << 16]).unwrap();
    let gate = dir.join("never").to_str().unwrap().to_owned();
    let _job = pool.submit(hold_until, (input.clone(), gate));
    // Written whole, then renamed: the test reads the name as soon as the file exists.
    std::fs::write(dir.join("name.partial"), segment_name(&input)).unwrap();
    std::fs::rename(dir.join("name.partial"), dir.join("name")).unwrap();
    std::thread::sleep(BOUND); // killed long before
}

#[test]
fn nothing_is_left_when_the_pools_parent_is_sigkilled() {
    let dir = tempfile::tempdir().unwrap();
    let shm_before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_probe_hold_a_segment_until_killed",
            "--test-threads=1",
        ])
        .env("PROCPOOL_TEST_SHM_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let name_file = dir.path().join("name");
    assert!(
        wait_until_exists(name_file.to_str().unwrap()),
        "the probe never started"
    );
    let name = std::fs::read_to_string(&name_file).unwrap();
    assert!(!name.is_empty(), "the probe wrote no segment name");
    // Its worker maps the segment (holds no descriptor of it); the parent holds one.
    let deadline = Instant::now() + BOUND;
    while holders_of(&name).is_empty() {
        assert!(Instant::now() < deadline, "nobody holds {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
    parent.kill().unwrap();
    parent.wait().unwrap();
    while !holders_of(&name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{name} outlived its killed parent"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    while !mappers_of(&name).is_empty() {
        assert!(Instant::now() < deadline, "a process still maps {name}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let shm_after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(shm_before, shm_after, "nothing new in /dev/shm");
}

#[test]
fn a_shared_array_submitted_from_a_thread_locals_destructor_fails_clearly() {
    bounded_sync("a job submitted from a destructor", || {
        let pool = ProcessPoolExecutor::new(1).unwrap();
        let shared = SharedSlice::from_slice(&[1_u8, 2, 3]).unwrap();
        let (first, late) = (
            (pool.clone(), shared.clone()),
            (pool.clone(), shared.clone()),
        );
        // The first submit sets up the pool's thread-locals, gone by the late one (were
        // std's destructor order to change, this test would fail with `Ok(6)`).
        let ended = at_thread_exit(
            move || assert_eq!(first.0.submit(byte_sum, first.1).wait(), Ok(6)),
            move || late.0.submit(byte_sum, late.1).wait(),
        );
        match ended {
            Err(JobError::Encode(message)) => {
                assert!(message.contains("thread-local's destructor"), "{message}");
                assert!(message.contains("SharedSlice<u8>"), "{message}")
            }
            other => panic!("expected an encoding error, got {other:?}"),
        }
        // The pool is unharmed.
        assert_eq!(pool.submit(byte_sum, shared).wait(), Ok(6));
    });
}

#[test]
fn a_read_only_array_is_made_while_another_thread_starts_programs() {
    // A program started with a user id set is forked, then exec'd (std cannot use
    // `posix_spawn` for it): meanwhile the child has every mapping of this process. It
    // must not hold a writable mapping of a read-only array being made, which sealing it
    // against writing would refuse (`EBUSY`).
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let starter = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut started = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                let status = std::process::Command::new("true").uid(uid).status();
                assert!(status.is_ok_and(|s| s.success()), "`true` failed");
                started += 1;
            }
            started
        }
    });
    let values = vec![7_u8; 1 << 20];
    let failed: Vec<_> = (0..200)
        .filter_map(|_| SharedSlice::from_slice(&values).err())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let started = starter.join().unwrap();
    assert!(started > 0);
    assert!(
        failed.is_empty(),
        "{} of 200 failed, {started} programs started: {}",
        failed.len(),
        failed[0]
    );
}
