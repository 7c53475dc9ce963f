//! A global `tracing` subscriber that records the message of every event, for the tests
//! that check what the pool reports.

use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every event's message.
struct Recorder;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        EVENTS.lock().unwrap().push(message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Makes the recorder this process's subscriber, at every level.
pub fn record_events() {
    tracing::subscriber::set_global_default(Recorder).unwrap();
}

/// How many recorded events' messages contain `text`.
pub fn count(text: &str) -> usize {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains(text))
        .count()
}

/// Whether some recorded event's message contains `text`.
pub fn seen(text: &str) -> bool {
    count(text) > 0
}
