//! The window policy, with a fake clock.

use super::*;
use crate::handle::JobState;
use crate::job::ErasedJob;

fn double(x: u64) -> u64 {
    x * 2
}

fn triple(x: u64) -> u64 {
    x * 3
}

/// A claimed job of `f` and its target, as the serving loop holds it.
///
/// Jobs are timed per function pointer, and an optimized build may give a small
/// function a copy of its own in each codegen unit that takes its address (a closure
/// can be in another): each test takes a function's address once.
fn claimed(f: fn(u64) -> u64, x: u64) -> (Target, QueuedJob) {
    let call = ErasedJob::single(f, x).call;
    let state = JobState::new();
    assert!(state.try_start());
    let target = call.target();
    let job = QueuedJob {
        target,
        decoder: call.decoder(),
        state,
        timeout: None,
        input: vec![0; 8].into(),
        items: 1,
        retries_left: 0,
        attempts: 0,
        submitted: Instant::now(),
        kept: Default::default(),
    };
    (target, job)
}

/// `job` with `input` as its encoded argument.
fn with_input(mut job: QueuedJob, input: Vec<u8>) -> QueuedJob {
    job.input = input.into();
    job
}

/// Runs `jobs` jobs of `f` through `line` one at a time, each taking `took`.
fn time_jobs(line: &mut Line<'_>, f: fn(u64) -> u64, jobs: usize, took: Duration) {
    time_chunks(line, f, jobs, 1, took);
}

/// Runs `jobs` jobs of `items` items each (chunks, but for 1) of `f` through `line` one
/// at a time, each taking `took`.
fn time_chunks(line: &mut Line<'_>, f: fn(u64) -> u64, jobs: usize, items: usize, took: Duration) {
    let mut now = Instant::now();
    for x in 0..jobs as u64 {
        let (_, mut job) = claimed(f, x);
        job.items = items;
        line.push(x, with_input(job, vec![0; 8]));
        line.promote(now);
        now += took;
        let answer = postcard::to_allocvec(&(2 * x)).unwrap();
        line.answer(Outcome::Ok, answer.into(), now, &mut Wakes::default());
    }
}

#[test]
fn a_chunk_is_expected_to_take_as_long_as_its_items() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    // Chunks of 100 items that take 1 ms: 10 µs an item.
    time_chunks(&mut line, double, 3, 100, Duration::from_millis(1));
    let target = claimed(double, 0).0;
    assert_eq!(
        line.room(Some(target)),
        1,
        "the next is expected as long as the last"
    );
    // A chunk of 10 items is expected to take 100 µs, and leaves room behind it.
    let (_, mut job) = claimed(double, 7);
    job.items = 10;
    line.push(7, with_input(job, vec![0; 8]));
    let now = Instant::now();
    line.promote(now);
    assert_eq!(line.work, Duration::from_micros(100));
    let done = now + Duration::from_micros(100);
    line.answer(Outcome::Ok, vec![0; 4].into(), done, &mut Wakes::default());
    // Once one of 10 items has been timed, the next are expected to be like it.
    assert_eq!(
        line.room(Some(target)),
        window_for(Some(Duration::from_micros(100)))
    );
    assert_eq!(line.room(Some(target)), 10);
}

#[test]
fn items_of_a_few_nanoseconds_keep_their_fraction() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    // 1,000 items in 1.5 µs: 1.5 ns each, which whole nanoseconds would make 1.
    time_chunks(&mut line, double, 3, 1000, Duration::from_nanos(1500));
    let (_, mut job) = claimed(double, 9);
    job.items = 1000;
    line.push(9, with_input(job, vec![0; 8]));
    assert_eq!(line.work, Duration::from_nanos(1500));
}

#[test]
fn the_window_follows_job_time() {
    assert_eq!(window_for(None), 1);
    assert_eq!(window_for(Some(Duration::from_secs(1))), 1);
    assert_eq!(window_for(Some(Duration::from_micros(250))), 4);
    assert_eq!(window_for(Some(Duration::from_micros(1))), 1000);
    assert_eq!(window_for(Some(Duration::from_nanos(100))), MAX_WINDOW);
    assert_eq!(window_for(Some(Duration::ZERO)), MAX_WINDOW);
}

#[test]
fn a_function_not_timed_yet_goes_alone_to_an_idle_worker() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    let (target, job) = claimed(double, 1);
    assert_eq!(line.room(Some(target)), 1, "an idle worker takes one");
    line.push(1, with_input(job, vec![0; 8]));
    assert_eq!(line.room(Some(target)), 0, "nothing waits behind it");
    assert_eq!(
        line.room(None),
        0,
        "nor behind it as the function sent last"
    );
}

#[test]
fn short_jobs_stream_as_far_as_the_span_allows() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    time_jobs(&mut line, double, 1, Duration::from_micros(250));
    let (target, _) = claimed(double, 0);
    assert_eq!(line.room(Some(target)), 4, "1 ms of 250 us jobs");
    for x in 0..3 {
        let (_, job) = claimed(double, x);
        line.push(x, with_input(job, vec![0; 8]));
    }
    assert_eq!(line.room(None), 1, "the fourth still fits");
    let (_, job) = claimed(double, 3);
    line.push(3, with_input(job, vec![0; 8]));
    assert_eq!(line.room(None), 0, "the span is full");
    assert_eq!(counters.waiting(), 4, "waiting jobs count as queued");
    assert_eq!(line.bytes(), 32);
}

#[test]
fn short_jobs_of_one_function_open_no_window_for_another() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    time_jobs(&mut line, double, 10, Duration::from_micros(1));
    let (short, job) = claimed(double, 0);
    let (untimed, _) = claimed(triple, 0);
    let full = window_for(Some(Duration::from_micros(1)));
    assert_eq!(line.room(Some(short)), full);
    assert_eq!(line.room(Some(untimed)), 1, "an idle worker takes one");
    line.push(0, with_input(job, vec![]));
    assert_eq!(
        line.room(Some(untimed)),
        0,
        "not behind another function's job"
    );
    assert!(line.room(Some(short)) > 0);
}

#[test]
fn job_times_are_a_moving_average_per_function() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    time_jobs(&mut line, double, 1, Duration::from_micros(800));
    let (target, _) = claimed(double, 0);
    assert_eq!(line.job_time(target), Some(Duration::from_micros(800)));
    time_jobs(&mut line, double, 1, Duration::ZERO);
    assert_eq!(line.job_time(target), Some(Duration::from_micros(700)));
    // Only the last few functions are remembered.
    let others: [fn(u64) -> u64; TIMED_FUNCTIONS] = [
        |x| x + 1,
        |x| x + 2,
        |x| x + 3,
        |x| x + 4,
        |x| x + 5,
        |x| x + 6,
        |x| x + 7,
        |x| x + 8,
    ];
    for (i, f) in others.into_iter().enumerate() {
        assert!(
            line.job_time(target).is_some(),
            "forgotten after {i} others"
        );
        line.observe(claimed(f, 0).0, 1, Duration::ZERO);
    }
    assert_eq!(line.job_times.len(), TIMED_FUNCTIONS);
    assert_eq!(
        line.job_time(target),
        None,
        "the oldest function is forgotten"
    );
}

#[test]
fn the_head_runs_from_its_promotion_and_its_answer_completes_it() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    let (target, first) = claimed(double, 21);
    let state = first.state.clone();
    state.make_stoppable(line.stopper().unwrap());
    line.push(7, with_input(first, vec![1, 2, 3]));
    assert_eq!(line.head_id(), None, "sent, not running yet");
    let start = Instant::now();
    line.promote(start);
    assert_eq!(line.head_id(), Some(7));
    assert_eq!(line.bytes(), 0, "the worker has the argument");
    assert_eq!(counters.workers_busy.load(Ordering::Relaxed), 1);
    assert!(
        state.cancel(),
        "a running job on a stoppable line can be stopped"
    );
    let answer = postcard::to_allocvec(&42_u64).unwrap();
    let mut wakes = Wakes::default();
    line.answer(
        Outcome::Ok,
        answer.into(),
        start + Duration::from_micros(5),
        &mut wakes,
    );
    assert!(state.is_done() && line.is_empty());
    assert_eq!(line.job_time(target), Some(Duration::from_micros(5)));
    assert_eq!(counters.workers_busy.load(Ordering::Relaxed), 0);
    assert_eq!(counters.completed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_line_that_cannot_stop_its_worker_never_makes_a_job_stoppable() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, false);
    let (_, job) = claimed(double, 1);
    let state = job.state.clone();
    assert!(line.stopper().is_none());
    line.push(1, with_input(job, vec![]));
    line.promote(Instant::now());
    assert!(!state.cancel(), "a running job that cannot be stopped");
    line.fail_head(JobError::Cancelled);
    assert!(state.is_done());
}

#[test]
fn jobs_behind_a_lost_head_go_back_untouched() {
    let counters = Counters::default();
    let mut line = Line::new(&counters, true);
    // One reference to `double`: a closure may hold a copy of its own (see `claimed`).
    let f: fn(u64) -> u64 = double;
    time_jobs(&mut line, f, 1, Duration::from_micros(1));
    let jobs: Vec<_> = (0..3).map(|x| claimed(f, x)).collect();
    let states: Vec<_> = jobs.iter().map(|(_, j)| j.state.clone()).collect();
    for (x, (_, job)) in (0..).zip(jobs) {
        line.push(x, with_input(job, vec![x as u8; 4]));
    }
    line.promote(Instant::now());
    line.fail_head(JobError::Cancelled);
    let waiting = line.take_waiting();
    assert_eq!(waiting.len(), 2);
    assert!(states[0].is_done() && !states[1].is_done() && !states[2].is_done());
    assert_eq!(&waiting[0].input[..], &[1_u8; 4][..], "as encoded");
    assert_eq!(counters.waiting(), 0);
    assert_eq!(counters.failures().cancelled, 1);
    assert!(line.is_empty() && line.bytes() == 0);
    let full = window_for(Some(Duration::from_micros(1)));
    assert_eq!(line.room(None), full, "the function stays timed");
}

/// Over a link with a lead, a worker running a long job of known length is sent the
/// next one that long before the running one is expected to end, and only one; never
/// behind a job of unknown length, nor over a link without a lead.
#[test]
fn a_link_with_a_lead_gets_the_next_long_job_just_before_the_running_one_ends() {
    let counters = Counters::default();
    let lead = Duration::from_millis(2);
    let mut line = Line::new(&counters, true).with_lead(lead);
    let f: fn(u64) -> u64 = triple;
    let (target, job) = claimed(f, 0);
    line.push(0, with_input(job, vec![0; 8]));
    let start = Instant::now();
    line.promote(start);
    assert_eq!(
        line.prefetch_at(Some(target)),
        None,
        "its length is unknown"
    );
    line.answer(
        Outcome::Ok,
        vec![0].into(),
        start + Duration::from_millis(20),
        &mut Wakes::default(),
    );
    // Timed at 20 ms: a job runs, the next may follow 18 ms after it started.
    let (_, job) = claimed(f, 1);
    line.push(1, with_input(job, vec![0; 8]));
    let started = start + Duration::from_millis(30);
    line.promote(started);
    let at = started + Duration::from_millis(18);
    assert_eq!(line.prefetch_at(Some(target)), Some(at));
    assert_eq!(
        line.room_at(Some(target), at - Duration::from_micros(1)),
        0,
        "not yet"
    );
    assert_eq!(line.room_at(Some(target), at), 1, "now");
    let (_, job) = claimed(f, 2);
    line.push(2, with_input(job, vec![0; 8]));
    assert_eq!(line.prefetch_at(None), None, "one waits, no more");
    assert_eq!(line.room_at(None, at + Duration::from_secs(1)), 0);
    // A function not timed here does not follow it.
    let other: fn(u64) -> u64 = double;
    let (untimed, _) = claimed(other, 0);
    let mut alone = Line::new(&counters, true).with_lead(lead);
    time_jobs(&mut alone, f, 1, Duration::from_millis(20));
    let (_, job) = claimed(f, 1);
    alone.push(1, with_input(job, vec![0; 8]));
    alone.promote(started);
    assert_eq!(alone.prefetch_at(Some(untimed)), None);
    // Without a lead, the long job goes alone.
    let mut local = Line::new(&counters, true);
    time_jobs(&mut local, f, 1, Duration::from_millis(20));
    let (_, job) = claimed(f, 1);
    local.push(1, with_input(job, vec![0; 8]));
    local.promote(started);
    assert_eq!(local.prefetch_at(Some(target)), None);
    assert_eq!(local.room_at(Some(target), at + Duration::from_secs(1)), 0);
}
