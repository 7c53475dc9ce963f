//! Arbitrary bytes into the wire decoders (frames in both directions, chunk payloads):
//! errors are fine; a panic, a hang or a huge allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    procpool::fuzzing::decode(data);
});
