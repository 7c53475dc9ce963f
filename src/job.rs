//! Jobs with their types erased: a typed function and its argument become an [`ErasedJob`]
//! that any executor accepts, carrying monomorphized helpers ([`Call`]) for both ways of
//! running it.
//!
//! In this process ([`Call::run_here`], the thread pool's way: no serialization); or in a
//! worker ([`Call::encode_input`] ships the argument to the function [`Call::target`]
//! names, the worker runs it with [`crate::run`], and the decoder from [`Call::decoder`]
//! turns the answer back into `R`). The pairing of each kind of job with what a worker
//! does with it lives here too: the [`Body`] implementations of [`Single`], [`Chunk`],
//! [`Init`] and [`State`].

use crate::error::JobError;
use crate::options::JobOptions;
use crate::run;
use crate::ship::{Body, Target};
use crate::wire::items::{self, EncodedItems, is_byte_buffer};
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A job with its types erased, as the object-safe [`Executor`](crate::Executor) takes it.
///
/// Made by [`ExecutorExt`](crate::ExecutorExt)'s typed methods; you do not build one
/// yourself. It carries the function, its argument, and monomorphized helpers to run it in
/// this process, to encode the argument and to decode the result.
pub struct ErasedJob {
    pub(crate) call: Box<dyn Call>,
    pub(crate) options: JobOptions,
    /// Room reserved for it on a bounded pool ([`Permit`](crate::Permit)).
    pub(crate) permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Why the pool gave it back, when it did.
    pub(crate) refusal: Option<crate::admission::Refusal>,
}

impl ErasedJob {
    pub(crate) fn single<A, R>(f: fn(A) -> R, arg: A) -> ErasedJob
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ErasedJob {
            call: Box::new(Single { f, arg }),
            options: JobOptions::default(),
            permit: None,
            refusal: None,
        }
    }

    pub(crate) fn chunk<A, R>(f: fn(A) -> R, args: Vec<A>) -> ErasedJob
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ErasedJob {
            call: Box::new(Chunk { f, args }),
            options: JobOptions::default(),
            permit: None,
            refusal: None,
        }
    }

    /// A `map` chunk whose arguments were encoded as they were pulled.
    pub(crate) fn encoded_chunk<A, R>(chunk: EncodedChunk<A, R>) -> ErasedJob
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ErasedJob {
            call: Box::new(chunk),
            options: JobOptions::default(),
            permit: None,
            refusal: None,
        }
    }

    pub(crate) fn with_options(mut self, options: JobOptions) -> ErasedJob {
        self.options = options;
        self
    }

    /// A job of `call`, as a pool that took it apart gives it back.
    pub(crate) fn from_parts(call: Box<dyn Call>, options: JobOptions) -> ErasedJob {
        ErasedJob {
            call,
            options,
            permit: None,
            refusal: None,
        }
    }

    /// The job, given back as `refusal` says.
    pub(crate) fn refused(mut self, refusal: crate::admission::Refusal) -> ErasedJob {
        self.refusal = Some(refusal);
        self
    }

    /// Why the pool gave this job back (a job given back without a word was refused by
    /// a shutdown).
    pub(crate) fn refusal(&self) -> crate::admission::Refusal {
        self.refusal.unwrap_or(crate::admission::Refusal::ShutDown)
    }
}

impl fmt::Debug for ErasedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedJob")
            .field("items", &self.call.items())
            .finish_non_exhaustive()
    }
}

/// What a job produced: `R` for a single job; for a chunk, on a thread pool a
/// [`ChunkValues<A, R>`] if every item succeeded, else `Vec<Result<R, JobError>>`, and
/// [`EncodedItems<R>`] on a process pool.
pub(crate) type Output = Box<dyn Any + Send>;

/// Decodes a worker's answer into the job's [`Output`].
///
/// It owns the answer, so that a `Vec<u8>` result gathered in a buffer of its own is
/// handed over rather than copied.
pub(crate) type Decoder = fn(bytes::Bytes, crate::shared::Kept) -> Result<Output, JobError>;

/// The monomorphized helpers of one job.
pub(crate) trait Call: Send + 'static {
    /// Runs the job in this process, catching a panic.
    fn run_here(self: Box<Self>) -> Result<Output, JobError>;
    /// Where the worker finds the function.
    fn target(&self) -> Target;
    /// Appends the encoded argument(s) to `out`. May move the argument out (a byte buffer
    /// is handed over without a copy): call it once, just before the job is shipped.
    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError>;
    /// How to decode the worker's answer.
    fn decoder(&self) -> Decoder;
    /// Puts back what [`encode_input`](Call::encode_input) moved out of the argument (a
    /// byte buffer), so that a refused submission gives the argument back whole.
    fn restore_input(&mut self, _input: Vec<u8>) {}
    /// The argument(s), given back when a submission is refused.
    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send>;
    /// The segments of shared arrays its arguments named when they were encoded before
    /// [`encode_input`](Call::encode_input) (a chunk encoded as it was gathered).
    fn take_kept(&mut self) -> crate::shared::Kept {
        crate::shared::Kept::default()
    }
    /// Number of items (1, or a chunk's length).
    fn items(&self) -> usize;
    /// Whether this is a chunk of a map (which would know how long it ran).
    fn is_chunk(&self) -> bool {
        false
    }
}

/// `f(arg)`: one argument, one result.
pub(crate) struct Single<A, R> {
    f: fn(A) -> R,
    arg: A,
}

impl<A, R> Body<fn(A) -> R> for Single<A, R>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(f: fn(A) -> R, input: &mut Vec<u8>, out: &mut Vec<u8>) -> run::Outcome {
        run::run_single(f, input, out)
    }
}

impl<A, R> Call for Single<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn run_here(self: Box<Self>) -> Result<Output, JobError> {
        let Single { f, arg } = *self;
        match catch_unwind(AssertUnwindSafe(move || f(arg))) {
            Ok(r) => Ok(Box::new(r)),
            Err(payload) => Err(JobError::from_panic_payload(payload)),
        }
    }

    fn target(&self) -> Target {
        Target::new::<fn(A) -> R, Self>(self.f)
    }

    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError> {
        if let Some(bytes) = (&mut self.arg as &mut dyn Any).downcast_mut::<Vec<u8>>() {
            // A byte buffer travels as raw bytes, handed over rather than copied.
            if out.is_empty() {
                std::mem::swap(out, bytes);
            } else {
                out.extend_from_slice(bytes);
            }
            return Ok(());
        }
        if crate::wire::plain::put_vec(&self.arg, out) {
            return Ok(()); // numbers, packed
        }
        items::encode_into(&self.arg, out).map_err(JobError::Encode)
    }

    fn decoder(&self) -> Decoder {
        decode_single::<R>
    }

    fn restore_input(&mut self, input: Vec<u8>) {
        if let Some(bytes) = (&mut self.arg as &mut dyn Any).downcast_mut::<Vec<u8>>() {
            *bytes = input; // `encode_input` swapped the buffer out
        }
    }

    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.arg)
    }

    fn items(&self) -> usize {
        1
    }
}

/// `f` over every item of a `map` chunk, one result per item.
pub(crate) struct Chunk<A, R> {
    f: fn(A) -> R,
    args: Vec<A>,
}

/// What a chunk run here gives back when every item succeeded: the values, and the
/// vector its arguments came in, emptied, for the map to gather its next chunk in.
///
/// Without it the worker freed that vector and the caller allocated the next one, an
/// allocation and a free per chunk on two threads. A large one also makes glibc merge
/// every small block freed since the last: in a map of owned `String`s, the items the
/// worker had just dropped (`malloc_consolidate`, 3.6% of a `sentiment` run's samples on
/// the workers, gone from their profile with this).
pub(crate) struct ChunkValues<A, R> {
    pub(crate) values: Vec<R>,
    pub(crate) spent: Vec<A>,
}

impl<A, R> Body<fn(A) -> R> for Chunk<A, R>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(f: fn(A) -> R, input: &mut Vec<u8>, out: &mut Vec<u8>) -> run::Outcome {
        run::run_chunk(f, input, out)
    }
}

impl<A, R> Call for Chunk<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// The results are a [`ChunkValues`] while every item succeeds (a `Vec<R>`: a
    /// fraction of the bytes of `Result<R, JobError>`, 72 or more per item, to write here
    /// and read on the caller's side); from the first item that panics, a
    /// `Vec<Result<R, JobError>>`.
    fn run_here(self: Box<Self>) -> Result<Output, JobError> {
        let Chunk { f, mut args } = *self;
        let run = move |arg| {
            catch_unwind(AssertUnwindSafe(move || f(arg))).map_err(JobError::from_panic_payload)
        };
        let mut values = Vec::with_capacity(args.len());
        let mut left = args.drain(..);
        while let Some(arg) = left.next() {
            match run(arg) {
                Ok(value) => values.push(value),
                Err(error) => {
                    let mut results = Vec::with_capacity(values.len() + 1 + left.len());
                    results.extend(values.into_iter().map(Ok));
                    results.push(Err(error));
                    results.extend(left.map(run));
                    return Ok(Box::new(results));
                }
            }
        }
        drop(left);
        Ok(Box::new(ChunkValues {
            values,
            spent: args,
        }))
    }

    fn target(&self) -> Target {
        Target::new::<fn(A) -> R, Self>(self.f)
    }

    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError> {
        items::put_args(&self.args, out)
    }

    fn decoder(&self) -> Decoder {
        decode_chunk::<R>
    }

    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.args)
    }

    fn items(&self) -> usize {
        self.args.len()
    }

    fn is_chunk(&self) -> bool {
        true
    }
}

/// A `map` chunk for a pool that ships it, its arguments encoded one by one as the map
/// pulls them, in the layout [`items::put_args`] writes, each argument dropped as soon as
/// it is encoded (for arguments that are not plain: plain ones are packed in one copy).
///
/// Encoding a whole `Vec<A>` at once, after it was gathered, freed its items together:
/// a run of frees, then a run of allocations for the next chunk's items, each past the
/// allocator's per-thread cache (glibc's tcache keeps 7 blocks a size). Dropped one by one,
/// each item's block is the next one's (perf: `_int_malloc` and `_int_free`, 8% of the
/// samples of a `map` of a million owned strings on a process pool, are gone).
pub(crate) struct EncodedChunk<A, R> {
    f: fn(A) -> R,
    /// Room for the count, then the tagged arguments.
    input: Vec<u8>,
    items: usize,
    /// Why the chunk cannot be sent, if an argument's error could not be written.
    failed: Option<JobError>,
    /// The segments the shared arrays in its arguments name (they were encoded as
    /// handles), held by the pool until the chunk has ended.
    kept: crate::shared::Kept,
}

impl<A: Serialize + 'static, R> EncodedChunk<A, R> {
    /// An empty chunk, with room for `bytes` of arguments (so that it rarely grows by
    /// copying).
    pub(crate) fn with_capacity(f: fn(A) -> R, bytes: usize) -> EncodedChunk<A, R> {
        // A large one in a kept buffer, whose pages are already there (the arguments of
        // the chunks before it, and their answers, went back to the spares).
        let mut input = crate::spares::SPARES.empty(bytes.saturating_add(4));
        input.extend_from_slice(&[0; 4]);
        EncodedChunk {
            f,
            input,
            items: 0,
            failed: None,
            kept: crate::shared::Kept::default(),
        }
    }

    /// Encodes `arg` after the arguments before it, and drops it. An argument that does
    /// not encode fails only its item (as [`items::put_args`] writes it).
    pub(crate) fn push(&mut self, arg: A) {
        let (put, kept) = crate::shared::keeping(|| items::put_tagged(&arg, &mut self.input));
        if let Err(error) = put {
            self.failed.get_or_insert(error);
        }
        self.kept.extend(kept);
        self.items += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.items
    }

    /// Bytes of the encoded arguments so far.
    pub(crate) fn encoded_len(&self) -> usize {
        self.input.len() - 4
    }
}

impl<A, R> Call for EncodedChunk<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// As a worker runs it (only a pool that does not ship jobs runs one here, and this
    /// crate's such pool gets plain chunks instead).
    fn run_here(mut self: Box<Self>) -> Result<Output, JobError> {
        let mut input = Vec::new();
        self.encode_input(&mut input)?;
        let mut out = Vec::new();
        match run::run_chunk(self.f, &input, &mut out) {
            run::Outcome::Ok => decode_chunk::<R>(out.into(), self.take_kept()),
            other => Err(JobError::Decode(format!("a chunk ran here: {other:?}"))),
        }
    }

    fn target(&self) -> Target {
        // The worker runs it as any chunk.
        Target::new::<fn(A) -> R, Chunk<A, R>>(self.f)
    }

    fn encode_input(&mut self, out: &mut Vec<u8>) -> Result<(), JobError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let count = items::chunk_count(self.items)?;
        self.input[..4].copy_from_slice(&count.to_le_bytes());
        if out.is_empty() {
            std::mem::swap(out, &mut self.input);
        } else {
            out.extend_from_slice(&self.input);
        }
        Ok(())
    }

    fn decoder(&self) -> Decoder {
        decode_chunk::<R>
    }

    fn restore_input(&mut self, input: Vec<u8>) {
        self.input = input;
    }

    fn take_kept(&mut self) -> crate::shared::Kept {
        std::mem::take(&mut self.kept)
    }

    /// Its arguments are encoded: nothing to give back (a refused chunk of a `map` waits
    /// for room and is submitted again).
    fn into_arg(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(())
    }

    fn items(&self) -> usize {
        self.items
    }

    fn is_chunk(&self) -> bool {
        true
    }
}

/// A worker initializer, `f()`, run once before the worker's first job.
pub(crate) struct Init;

impl Body<fn()> for Init {
    fn run(f: fn(), _: &mut Vec<u8>, _: &mut Vec<u8>) -> run::Outcome {
        run::run_initializer(f)
    }
}

/// A worker-state builder, `f() -> S`, whose value the worker installs for its jobs.
pub(crate) struct State<S>(std::marker::PhantomData<fn() -> S>);

impl<S: 'static> Body<fn() -> S> for State<S> {
    fn run(f: fn() -> S, _: &mut Vec<u8>, _: &mut Vec<u8>) -> run::Outcome {
        run::run_initializer(move || crate::state::build_and_install(f))
    }
}

/// The target of a worker initializer.
pub(crate) fn initializer_target(f: fn()) -> Target {
    Target::new::<fn(), Init>(f)
}

/// The target of a worker-state builder.
pub(crate) fn state_target<S: 'static>(f: fn() -> S) -> Target {
    Target::new::<fn() -> S, State<S>>(f)
}

/// Encodes a job's argument(s) into `out`, on the submitting thread: the pool's own threads
/// never run user code. A `Serialize` impl that panics fails the job with
/// [`JobError::Encode`] (inside a chunk, only its item).
pub(crate) fn encode(call: &mut dyn Call, out: &mut Vec<u8>) -> Result<(), JobError> {
    match catch_unwind(AssertUnwindSafe(|| call.encode_input(out))) {
        Ok(encoded) => encoded,
        Err(payload) => Err(JobError::Encode(format!(
            "Serialize panicked: {}",
            crate::error::panic_message(payload)
        ))),
    }
}

/// A worker's answer as the pool hands it over: decoded by the caller, on the caller's
/// thread, when it reads the result ([`Undecoded::decode`]), so that a `Deserialize` impl
/// runs, and may panic or take its time, there rather than on the pool's threads.
pub(crate) struct Undecoded {
    payload: bytes::Bytes,
    decoder: Decoder,
    /// The shared arrays the job's argument named, which its result may name too.
    kept: crate::shared::Kept,
}

impl Undecoded {
    pub(crate) fn new(
        payload: bytes::Bytes,
        decoder: Decoder,
        kept: crate::shared::Kept,
    ) -> Undecoded {
        Undecoded {
            payload,
            decoder,
            kept,
        }
    }

    /// The job's [`Output`]; a `Deserialize` impl that panics gives [`JobError::Decode`].
    pub(crate) fn decode(self) -> Result<Output, JobError> {
        let Undecoded {
            payload,
            decoder,
            kept,
        } = self;
        // The decoder holds `kept` until the result has opened what it names: a chunk's
        // items decode later, one by one, so its results hold it until then.
        let decoded = catch_unwind(AssertUnwindSafe(move || decoder(payload, kept)));
        match decoded {
            Ok(output) => output,
            Err(payload) => Err(JobError::Decode(format!(
                "result: Deserialize panicked: {}",
                crate::error::panic_message(payload)
            ))),
        }
    }
}

/// Refuses a target whose function a worker could not find (see
/// [`Target::check_shippable`]).
pub(crate) fn check_shippable(target: &Target) -> Result<(), JobError> {
    target
        .check_shippable()
        .map_err(|address| JobError::Unshippable {
            reason: format!(
                "address {address:#x} is outside the main executable (a dynamically loaded \
                 library?); workers can only call functions compiled into the program"
            ),
        })
}

fn decode_single<R: DeserializeOwned + Send + 'static>(
    bytes: bytes::Bytes,
    mut kept: crate::shared::Kept,
) -> Result<Output, JobError> {
    if is_byte_buffer::<R>() {
        // Without a copy when the answer has a buffer of its own (a large one does).
        return Ok(Box::new(Vec::<u8>::from(bytes)));
    }
    let decoded = match crate::wire::plain::get_vec::<R>(&bytes) {
        Some(numbers) => numbers.map(|r| Box::new(r) as Output).ok_or_else(|| {
            JobError::Decode("result: packed numbers of a length no whole number of values".into())
        }),
        None => crate::shared::decoding(&mut kept, || postcard::from_bytes::<R>(&bytes))
            .map(|r| Box::new(r) as Output)
            .map_err(|e| JobError::Decode(crate::shared::explain(format!("result: {e}")))),
    };
    drop(kept); // after the result opened the shared arrays it names
    // Decoded into a value of its own: the answer's buffer is kept for the next message.
    crate::spares::recycle(bytes);
    decoded
}

fn decode_chunk<R: DeserializeOwned + Send + 'static>(
    bytes: bytes::Bytes,
    kept: crate::shared::Kept,
) -> Result<Output, JobError> {
    Ok(Box::new(EncodedItems::<R>::new(bytes)?.holding(kept)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: i64) -> i64 {
        x * x
    }

    fn other(x: i64) -> i64 {
        x + 1
    }

    #[test]
    fn functions_of_this_binary_are_shippable() {
        let job = ErasedJob::single(square, 2);
        assert!(check_shippable(&job.call.target()).is_ok());
        assert!(check_shippable(&initializer_target(|| {})).is_ok());
    }

    #[test]
    fn a_target_names_the_function_and_the_kind_of_job() {
        let single = ErasedJob::single(square, 2).call.target();
        assert_eq!(single, ErasedJob::single(square, 3).call.target());
        assert_ne!(single, ErasedJob::single(other, 3).call.target());
        assert_ne!(single, ErasedJob::chunk(square, vec![3]).call.target());
    }

    fn shout(s: String) -> String {
        s.to_uppercase()
    }

    #[test]
    fn a_chunk_encoded_as_pulled_is_what_put_args_writes_and_runs_here_too() {
        let args: Vec<String> = ["a", "bc", "", "def"].map(String::from).into();
        let mut gathered = Vec::new();
        items::put_args(&args, &mut gathered).unwrap();
        let mut chunk = EncodedChunk::with_capacity(shout, 0);
        for arg in args.clone() {
            chunk.push(arg);
        }
        assert_eq!((chunk.len(), chunk.encoded_len()), (4, gathered.len() - 4));
        let mut job = ErasedJob::encoded_chunk(chunk);
        assert_eq!(
            job.call.target(),
            ErasedJob::chunk(shout, args).call.target()
        );
        let mut input = Vec::new();
        job.call.encode_input(&mut input).unwrap();
        assert_eq!(input, gathered, "the same bytes, the count included");
        job.call.restore_input(input);
        let ran = job.call.run_here().unwrap();
        let results: Vec<_> = ran.downcast::<EncodedItems<String>>().unwrap().collect();
        assert_eq!(
            results,
            ["A", "BC", "", "DEF"].map(|s| Ok(s.to_owned())).to_vec()
        );
    }

    fn odd_only(x: i64) -> i64 {
        assert!(x % 2 == 1, "{x} is even");
        x
    }

    #[test]
    fn a_chunk_run_here_gives_its_values_until_an_item_fails() {
        let ran = ErasedJob::chunk(square, vec![1, 2, 3])
            .call
            .run_here()
            .unwrap();
        let ran = *ran.downcast::<ChunkValues<i64, i64>>().unwrap();
        assert_eq!(ran.values, [1, 4, 9]);
        assert!(
            ran.spent.is_empty() && ran.spent.capacity() >= 3,
            "the arguments' vector"
        );
        let ran = ErasedJob::chunk(odd_only, vec![1, 3, 4, 5, 6])
            .call
            .run_here();
        let results = *ran
            .unwrap()
            .downcast::<Vec<Result<i64, JobError>>>()
            .unwrap();
        assert_eq!(results[..2], [Ok(1), Ok(3)]);
        assert!(
            matches!(&results[2], Err(JobError::Panicked { message, .. }) if message == "4 is even")
        );
        assert_eq!(results[3], Ok(5));
        assert!(
            matches!(&results[4], Err(JobError::Panicked { message, .. }) if message == "6 is even")
        );
    }

    #[test]
    fn a_byte_buffer_argument_is_handed_over() {
        let buffer = vec![1_u8, 2, 3];
        let address = buffer.as_ptr();
        let mut job = ErasedJob::single(|b: Vec<u8>| b.len(), buffer);
        let mut input = Vec::new();
        job.call.encode_input(&mut input).unwrap();
        assert_eq!(input.as_ptr(), address, "moved into the frame, not copied");
    }

    #[test]
    fn a_vector_of_numbers_travels_packed_both_ways() {
        let mut job = ErasedJob::single(|v: Vec<f64>| v, vec![1.0, -2.0, 0.5]);
        let mut input = Vec::new();
        job.call.encode_input(&mut input).unwrap();
        assert_eq!(input.len(), 24, "eight bytes each, no length or tags");
        assert_eq!(&input[8..16], &(-2.0_f64).to_le_bytes());
        let decoded = (job.call.decoder())(input.into(), Default::default()).unwrap();
        assert_eq!(*decoded.downcast::<Vec<f64>>().unwrap(), [1.0, -2.0, 0.5]);
        let odd = (job.call.decoder())(bytes::Bytes::from_static(&[0; 9]), Default::default());
        assert!(matches!(odd, Err(JobError::Decode(m)) if m.contains("no whole number")));
    }
}
