//! Classify a million short reviews as positive, negative or neutral with a word lexicon,
//! sequentially, on a ThreadPoolExecutor and on a ProcessPoolExecutor, with a progress bar.
//!
//! ```text
//! cargo run --release --example sentiment -- [--n 1000000] [--workers <cpus>]
//! ```
//!
//! The lexicon is **worker-local state**: each worker builds it once, through the pool's
//! `worker_state` initializer, and every job reads it with `procpool::with_worker_state`;
//! it never travels with a job. The same `classify` function runs on both pools (and on
//! the main thread for the sequential baseline, after `install_worker_state`). The bar is
//! fed by `Map::on_progress`. All three counts must agree; the example exits with an error
//! if they do not.
//!
//! The reviews are generated first, as a program would load them from a file, and only
//! their classification is timed. Each executor gets its own copy of the owned `String`s,
//! made before its clock starts, and consumes it: the strings are moved into the jobs, as
//! a program hands over what it loaded, so no executor pays for cloning them (a clone per
//! item in the timed loop, `reviews.iter().cloned()`, costs the caller's thread an
//! allocation and a copy per review, which on 2 cores is time taken from the workers).
//!
//! A review takes about a third of a microsecond to classify. Threads read the moved
//! strings in place; a process pool must encode each one, send it and decode it, which
//! costs a good part of what classifying it does, so processes gain less than threads.
//! That is the shape of work to keep on threads (or to hand to processes in larger
//! pieces, such as a file per job).

#[path = "support/mod.rs"]
mod support;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use procpool::{Executor, ExecutorExt, ProcessPoolExecutor, ThreadPoolExecutor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Word scores: the worker-local state.
struct Lexicon {
    scores: HashMap<String, i32>,
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "love",
    "loved",
    "amazing",
    "wonderful",
    "best",
    "perfect",
    "happy",
    "fantastic",
    "enjoyed",
    "recommend",
    "brilliant",
    "superb",
    "pleasant",
    "solid",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "hated",
    "worst",
    "poor",
    "boring",
    "broken",
    "disappointing",
    "waste",
    "refund",
    "slow",
    "ugly",
    "annoying",
    "useless",
    "cheap",
];
const NEUTRAL: &[&str] = &[
    "the", "a", "it", "was", "this", "product", "movie", "book", "service", "and", "but", "really",
    "quite", "very", "i", "my", "we", "after", "week", "delivery", "price", "story",
];

/// Builds the lexicon: what a real program would load from a file or a model.
fn load_lexicon() -> Lexicon {
    let mut scores = HashMap::new();
    for (words, score) in [(POSITIVE, 1), (NEGATIVE, -1)] {
        for word in words {
            scores.insert(word.to_string(), score);
            scores.insert(format!("{word}!"), 2 * score); // emphasis counts double
        }
    }
    Lexicon { scores }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Sentiment {
    Positive,
    Negative,
    Neutral,
}

/// One job: scores a review with this worker's lexicon. "not" flips the next word.
fn classify(review: String) -> Sentiment {
    procpool::with_worker_state(|lexicon: &Lexicon| {
        let mut score = 0;
        let mut sign = 1;
        for word in review.split_whitespace() {
            if word == "not" {
                sign = -1;
                continue;
            }
            score += sign * lexicon.scores.get(word).copied().unwrap_or(0);
            sign = 1;
        }
        match score {
            s if s > 0 => Sentiment::Positive,
            s if s < 0 => Sentiment::Negative,
            _ => Sentiment::Neutral,
        }
    })
}

/// Review number `i`: 6 to 13 words drawn by a hash of `i`, so every run sees the same.
fn review(i: u64) -> String {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state ^= state >> 33;
        state = state.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        state ^= state >> 29;
        state
    };
    let words = 6 + next() % 8;
    let mut text = String::new();
    for _ in 0..words {
        let r = next();
        let word = match r % 10 {
            0 => POSITIVE[(r / 10) as usize % POSITIVE.len()],
            1 => NEGATIVE[(r / 10) as usize % NEGATIVE.len()],
            2 if r % 7 == 0 => "not",
            _ => NEUTRAL[(r / 10) as usize % NEUTRAL.len()],
        };
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
        if r % 13 == 0 {
            text.push('!');
        }
    }
    text
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    positive: u64,
    negative: u64,
    neutral: u64,
}

impl Counts {
    fn add(&mut self, sentiment: Sentiment) {
        match sentiment {
            Sentiment::Positive => self.positive += 1,
            Sentiment::Negative => self.negative += 1,
            Sentiment::Neutral => self.neutral += 1,
        }
    }
}

fn progress_bar(name: &str, n: u64) -> ProgressBar {
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:40}] {human_pos}/{human_len} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// Classifies `reviews` on `pool` (unordered: only the counts matter), with a bar; the
/// strings are moved into the jobs.
async fn run_on(
    name: &str,
    pool: &dyn Executor,
    reviews: Vec<String>,
) -> Result<(Counts, Duration), procpool::JobError> {
    pool.submit(classify, review(0)).await?; // warm-up: the workers and their lexicons
    let bar = progress_bar(name, reviews.len() as u64);
    let start = Instant::now();
    let fed = bar.clone();
    let mut results = pool.map_unordered(classify, reviews).on_progress(move |p| {
        if let Some(total) = p.total {
            fed.set_length(total);
        }
        fed.set_position(p.completed);
    });
    let mut counts = Counts::default();
    while let Some(sentiment) = results.next().await {
        counts.add(sentiment?);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok((counts, elapsed))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut flags = support::Flags::parse("sentiment [--n N] [--workers W]")?;
    let n: u64 = flags.get("n", 1_000_000)?;
    let workers: usize = flags.get("workers", support::cpus())?;
    flags.finish()?;
    println!(
        "classifying {n} reviews, {workers} workers; e.g. {:?}\n",
        review(1)
    );

    let start = Instant::now();
    let reviews: Vec<String> = (0..n).map(review).collect();
    println!(
        "generated the reviews in {:.1?} (not timed below)\n",
        start.elapsed()
    );

    // Sequential: the same job function, with the state installed on this thread,
    // consuming its own copy of the strings as the pools do.
    procpool::install_worker_state(load_lexicon());
    let copy = reviews.clone();
    let start = Instant::now();
    let mut sequential = Counts::default();
    for review in copy {
        sequential.add(classify(review));
    }
    let sequential_time = start.elapsed();

    let threads = ThreadPoolExecutor::builder()
        .max_workers(workers)
        .worker_state(load_lexicon)
        .build()?;
    let (by_threads, thread_time) = run_on("ThreadPoolExecutor", &threads, reviews.clone()).await?;
    threads.shutdown().await;

    let processes = ProcessPoolExecutor::builder()
        .max_workers(workers)
        .worker_state(load_lexicon)
        .build()?;
    let (by_processes, process_time) = run_on("ProcessPoolExecutor", &processes, reviews).await?;
    processes.shutdown().await;

    let show = |c: &Counts| format!("{}/{}/{}", c.positive, c.negative, c.neutral);
    support::print_timings(
        "pos/neg/neu",
        &[
            ("sequential", sequential_time, show(&sequential)),
            ("ThreadPoolExecutor", thread_time, show(&by_threads)),
            ("ProcessPoolExecutor", process_time, show(&by_processes)),
        ],
    );
    if by_threads != sequential || by_processes != sequential {
        return Err(format!(
            "counts disagree: sequential {sequential:?}, threads {by_threads:?}, \
             processes {by_processes:?}"
        )
        .into());
    }
    if sequential.positive + sequential.negative + sequential.neutral != n {
        return Err(format!("{sequential:?} does not add up to {n} reviews").into());
    }
    println!(
        "\npositive {}, negative {}, neutral {}: all executors agree",
        sequential.positive, sequential.negative, sequential.neutral
    );
    Ok(())
}
