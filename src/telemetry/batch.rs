//! A line batcher: checks append their lines to one bounded buffer, and a thread of its own
//! writes the buffer out every few milliseconds. A decision costs a lock and a copy, never a
//! system call or a thread wake-up; a full buffer drops the line (the caller counts it).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the buffer is written out.
const INTERVAL: Duration = Duration::from_millis(50);
/// Most bytes waiting to be written; beyond, lines are dropped.
const LIMIT: usize = 8 << 20;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Where batches go; locked for each write, so `flush` and the thread never interleave.
    target: Mutex<Box<dyn Write + Send>>,
}

struct State {
    buffer: Vec<u8>,
    stopping: bool,
}

/// Lines for one writer.
pub(super) struct Batcher {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Batcher {
    /// Starts the writing thread.
    pub(super) fn new(target: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { buffer: Vec::with_capacity(64 << 10), stopping: false }),
            wake: Condvar::new(),
            target: Mutex::new(target),
        });
        let flusher = std::thread::Builder::new().name("decision-log".into()).spawn({
            let shared = Arc::clone(&shared);
            move || loop {
                let (batch, stopping) = {
                    let Ok(state) = shared.state.lock() else { return };
                    let Ok((mut state, _)) =
                        shared.wake.wait_timeout_while(state, INTERVAL, |state| !state.stopping)
                    else {
                        return;
                    };
                    // A burst's buffer is not kept for good: the next one starts at most 1 MiB.
                    let capacity = state.buffer.capacity().min(1 << 20);
                    (std::mem::replace(&mut state.buffer, Vec::with_capacity(capacity)), state.stopping)
                };
                shared.write(&batch);
                if stopping {
                    return;
                }
            }
        })?;
        Ok(Self { shared, flusher: Some(flusher) })
    }

    /// Writes out what is queued now, before returning.
    pub(super) fn flush(&self) {
        let batch = match self.shared.state.lock() {
            Ok(mut state) => std::mem::take(&mut state.buffer),
            Err(_) => return,
        };
        self.shared.write(&batch);
    }

    /// Queues one line (with its newline); false when the buffer is full and it was dropped.
    pub(super) fn push(&self, line: &[u8]) -> bool {
        let Ok(mut state) = self.shared.state.lock() else { return false };
        state.append(line)
    }
}

impl State {
    fn append(&mut self, line: &[u8]) -> bool {
        if self.buffer.len() + line.len() > LIMIT {
            return false;
        }
        self.buffer.extend_from_slice(line);
        true
    }
}

impl Shared {
    fn write(&self, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        if let Ok(mut target) = self.target.lock() {
            // Nowhere to report a failed write but the log it is failing to write.
            let _ = target.write_all(batch).and_then(|()| target.flush());
        }
    }
}

impl Drop for Batcher {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stopping = true;
        }
        self.shared.wake.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_it_drops() {
        let sink = Sink::default();
        let batcher = Batcher::new(Box::new(sink.clone())).unwrap();
        for index in 0..10_000 {
            assert!(batcher.push(format!("{index}\n").as_bytes()));
        }
        drop(batcher);
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<usize> = written.lines().map(|line| line.parse().unwrap()).collect();
        assert_eq!(lines, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn flush_writes_what_is_queued_before_it_returns() {
        let sink = Sink::default();
        let batcher = Batcher::new(Box::new(sink.clone())).unwrap();
        assert!(batcher.push(b"one\n"));
        batcher.flush();
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one\n");
    }

    /// On the buffer itself: through a `Batcher`, its thread may write the buffer out between
    /// two pushes, and the test would depend on when it ran.
    #[test]
    fn a_full_buffer_drops_the_line() {
        let mut state = State { buffer: Vec::new(), stopping: false };
        assert!(state.append(&vec![b'x'; LIMIT - 3]));
        assert!(state.append(b"ab\n"), "up to the limit");
        assert!(!state.append(b"\n"), "beyond the limit until the next write");
        assert_eq!(state.buffer.len(), LIMIT);
    }
}
