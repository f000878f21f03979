//! A session's outbound queue of serialised stanzas.
//!
//! Bounded, and never blocks the router: a full queue means the client does not read. It holds
//! no memory while empty. Most sessions are idle, and tokio's mpsc channel allocates a block of
//! 32 slots per channel up front (1.5 KiB per session, measured with dhat), which is why this
//! small queue exists.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the session task when something is queued or the outbox closes (one waiter).
    filled: Notify,
    /// Wakes patient senders when the session task takes something.
    drained: Notify,
    /// Wakes those waiting for the session to end (see [`Outbox::closed`]).
    ended: Notify,
}

#[derive(Default)]
struct State {
    /// The oldest item, outside `queue`: most of the time a session has one stanza waiting
    /// at most (a room's copy, a notification), and a deque would allocate its slots for it
    /// and free them again once it is taken.
    head: Option<Bytes>,
    queue: VecDeque<Bytes>,
    closed: bool,
}

impl State {
    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.queue.len()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    Full,
    Closed,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            filled: Notify::new(),
            drained: Notify::new(),
            ended: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `data` unless the outbox is full or closed.
    pub fn push(&self, data: Bytes) -> Push {
        {
            let mut state = self.state();
            if state.closed {
                return Push::Closed;
            }
            if state.len() >= self.capacity {
                return Push::Full;
            }
            if state.head.is_none() && state.queue.is_empty() {
                state.head = Some(data);
            } else {
                state.queue.push_back(data);
            }
        }
        // A stored permit if the session task is not waiting yet: no wakeup is lost.
        self.filled.notify_one();
        Push::Queued
    }

    /// Queues `data`, waiting up to `wait` for room.
    pub async fn push_patiently(&self, data: Bytes, wait: Duration) -> Push {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a pop in between still wakes us.
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.push(data.clone()) {
                Push::Full => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return Push::Full;
            }
        }
    }

    /// Takes the oldest queued item without waiting.
    pub fn pop(&self) -> Option<Bytes> {
        let data = {
            let mut state = self.state();
            let data = state.head.take().or_else(|| state.queue.pop_front());
            if state.queue.is_empty() && state.queue.capacity() > 0 {
                // Empty again: give the memory back rather than keep it for an idle session.
                state.queue = VecDeque::new();
            }
            data
        };
        if data.is_some() {
            self.drained.notify_waiters();
        }
        data
    }

    /// Waits for the next item; `None` once the outbox is closed.
    pub async fn next(&self) -> Option<Bytes> {
        loop {
            if let Some(data) = self.pop() {
                return Some(data);
            }
            if self.state().closed {
                return None;
            }
            self.filled.notified().await;
        }
    }

    /// Resolves once the outbox is closed (the session ended).
    pub async fn closed(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.state().closed {
                return;
            }
            ended.await;
        }
    }

    /// Refuses further items and drops those still queued.
    pub fn close(&self) {
        let dropped = {
            let mut state = self.state();
            state.closed = true;
            (state.head.take(), std::mem::take(&mut state.queue))
        };
        drop(dropped);
        self.filled.notify_one();
        self.drained.notify_waiters();
        self.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn bounded_in_order_and_closable() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(b("1")), Push::Queued);
        assert_eq!(outbox.push(b("2")), Push::Queued);
        assert_eq!(outbox.push(b("3")), Push::Full);
        assert_eq!(outbox.next().await, Some(b("1")));
        assert_eq!(outbox.pop(), Some(b("2")));
        assert_eq!(outbox.pop(), None);
        assert_eq!(
            outbox.state().queue.capacity(),
            0,
            "memory given back once empty"
        );
        outbox.push(b("4"));
        outbox.close();
        assert_eq!(outbox.push(b("5")), Push::Closed);
        assert_eq!(outbox.next().await, None);
    }

    #[tokio::test]
    async fn the_receiver_wakes_for_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let receiver = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next().await }
        });
        tokio::task::yield_now().await;
        outbox.push(b("x"));
        assert_eq!(receiver.await.unwrap(), Some(b("x")));
    }

    #[tokio::test]
    async fn waiters_learn_that_it_closed() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        outbox.close();
        waiter.await.unwrap();
        outbox.closed().await;
    }

    #[tokio::test]
    async fn patient_senders_wait_for_room_then_give_up() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        outbox.push(b("1"));
        let sender = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push_patiently(b("2"), Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(outbox.pop(), Some(b("1")));
        assert_eq!(sender.await.unwrap(), Push::Queued);
        let late = outbox
            .push_patiently(b("3"), Duration::from_millis(50))
            .await;
        assert_eq!(late, Push::Full, "nobody read within the wait");
    }
}
