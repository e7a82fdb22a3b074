//! A pool's slots: at most `size` items out at once, idle items kept for reuse (the most
//! recently returned first), and checkouts that find no free slot served first come, first
//! served. A returned item goes straight to a waiter under the one lock. Waiters carry a
//! deadline that `expire` enforces from the pool's upkeep, so waiting costs no timer.
//!
//! Items and waiters have a home, the worker thread whose event loop runs them
//! (`crate::shards`). A returned item goes to the oldest waiter of its own home, so the
//! connection's readiness and the client's land on one thread, if that waiter came at most
//! `FIFO_WITHIN` after the oldest of all and the oldest has not been passed over
//! `MAX_PASSED` times already; else the oldest takes it, whatever its home.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

/// How much later than the oldest waiter a waiter of the returned item's home may have come
/// and still be served first, and how many times the oldest lets that happen. Handing a
/// connection to another thread costs that thread a wake-up from this one and the connection
/// a move (`ServerConn::move_home`): with tighter bounds (5 ms, or 4 times) one transaction in
/// 16 crossed at pgbench -c 150, and two threads lost what they gained; with these, one in
/// 300-400 (BENCHMARKS.md).
const FIFO_WITHIN: Duration = Duration::from_millis(50);
const MAX_PASSED: u32 = 64;
/// Waiters looked at for one of the item's home.
const SCAN: usize = 64;

/// The worker thread an item belongs to (its sockets are registered with that thread's
/// event loop).
pub trait Homed {
    fn home(&self) -> usize;
}

pub struct Slots<T> {
    state: Mutex<State<T>>,
    /// `FIFO_WITHIN`, but for tests.
    fifo_within: Duration,
}

struct State<T> {
    idle: Vec<T>,
    /// Slots taken: items out, or being made by whoever took the slot.
    out: usize,
    size: usize,
    waiting: VecDeque<Arc<Waiter<T>>>,
}

struct Waiter<T> {
    home: usize,
    since: Instant,
    /// Items given to younger waiters while this one was the oldest (changed under the lock).
    passed: AtomicU32,
    deadline: Instant,
    grant: Mutex<Option<Granted<T>>>,
    waker: AtomicWaker,
}

/// A slot with the idle item on top, if any (`None`: make a new one); `Err` when no slot came
/// free before the deadline.
pub type Granted<T> = Result<Option<T>, Expired>;

#[derive(Debug, PartialEq, Eq)]
pub struct Expired;

/// What `take` found.
pub enum Take<'a, T: Homed> {
    /// A free slot, with the idle item on top if any.
    Now(Option<T>),
    /// In line for a slot.
    Queued(Queued<'a, T>),
}

impl<T: Homed> Slots<T> {
    pub fn new(size: usize) -> Slots<T> {
        Slots::with_fifo_within(size, FIFO_WITHIN)
    }

    fn with_fifo_within(size: usize, fifo_within: Duration) -> Slots<T> {
        Slots {
            fifo_within,
            state: Mutex::new(State {
                idle: Vec::new(),
                out: 0,
                size,
                waiting: VecDeque::new(),
            }),
        }
    }

    /// Takes a free slot (with an idle item of `home` if there is one, else any), or joins
    /// the line to wait up to `limit` for one.
    pub fn take(&self, limit: Duration, home: usize) -> Take<'_, T> {
        let mut st = self.lock();
        if st.out < st.size && st.waiting.is_empty() {
            st.out += 1;
            return Take::Now(st.pop_idle(home));
        }
        let since = Instant::now();
        let waiter = Arc::new(Waiter {
            home,
            since,
            passed: AtomicU32::new(0),
            deadline: since + limit,
            grant: Mutex::new(None),
            waker: AtomicWaker::new(),
        });
        st.waiting.push_back(waiter.clone());
        Take::Queued(Queued {
            slots: self,
            waiter: Some(waiter),
        })
    }

    /// The next idle item for a slot already taken (the one given was not fit for use).
    pub fn pop_idle(&self, home: usize) -> Option<T> {
        self.lock().pop_idle(home)
    }

    /// Returns an item and its slot; a waiter gets both (the oldest, or the oldest of the
    /// item's home: see the module).
    pub fn put(&self, item: T) {
        let mut st = self.lock();
        st.out -= 1;
        st.idle.push(item);
        serve(&mut st, self.fifo_within);
    }

    /// Frees a slot whose item is gone; a waiter gets it.
    pub fn free(&self) {
        let mut st = self.lock();
        st.out -= 1;
        serve(&mut st, self.fifo_within);
    }

    pub fn resize(&self, size: usize) {
        let mut st = self.lock();
        st.size = size;
        serve(&mut st, self.fifo_within);
    }

    /// Tells the waiters whose deadline is past that no slot came free.
    pub fn expire(&self, now: Instant) -> usize {
        let mut st = self.lock();
        let before = st.waiting.len();
        st.waiting.retain(|w| {
            if w.deadline > now {
                return true;
            }
            w.give(Err(Expired));
            false
        });
        before - st.waiting.len()
    }

    /// Wakes every waiter to look at its client (the pool upkeep does, once a second): a wait
    /// that is not watched costs nothing when the slot comes first.
    pub fn nudge_waiting(&self) {
        for w in &self.lock().waiting {
            w.waker.wake();
        }
    }

    /// Runs `f` on the idle items.
    pub fn with_idle<R>(&self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        f(&mut self.lock().idle)
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// When the oldest waiter came, if any waits.
    pub fn oldest_since(&self) -> Option<Instant> {
        self.lock().waiting.iter().map(|w| w.since).min()
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every change is made whole under the lock: a panic elsewhere cannot tear it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Homed> State<T> {
    /// The most recent idle item of `home`, else the most recent of any.
    fn pop_idle(&mut self, home: usize) -> Option<T> {
        let i = self.idle.iter().rposition(|t| t.home() == home);
        match i {
            Some(i) => Some(self.idle.remove(i)),
            None => self.idle.pop(),
        }
    }
}

/// Gives free slots to the waiters: the most recent idle item to the oldest waiter of its
/// home if it came within `FIFO_WITHIN` of the oldest of all and that one has been passed
/// over fewer than `MAX_PASSED` times, else to the oldest; a slot without an item to the
/// oldest waiter.
fn serve<T: Homed>(st: &mut State<T>, fifo_within: Duration) {
    while st.out < st.size {
        let Some(head) = st.waiting.front() else {
            return;
        };
        let at = match st.idle.last() {
            Some(item) if head.home != item.home() && head.passed.load(Relaxed) < MAX_PASSED => {
                let home = item.home();
                let within = head.since + fifo_within;
                let found = st
                    .waiting
                    .iter()
                    .take(SCAN)
                    .take_while(|w| w.since <= within)
                    .position(|w| w.home == home);
                if found.is_some() {
                    head.passed.fetch_add(1, Relaxed);
                }
                found.unwrap_or(0)
            }
            _ => 0,
        };
        let Some(w) = st.waiting.remove(at) else {
            return;
        };
        st.out += 1;
        let item = st.idle.pop();
        w.give(Ok(item));
    }
}

impl<T> Waiter<T> {
    fn give(&self, granted: Granted<T>) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = Some(granted);
        self.waker.wake();
    }

    fn taken(&self) -> Option<Granted<T>> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A checkout in line; dropped before it resolves, it leaves the line, or passes on what it
/// was given.
pub struct Queued<'a, T: Homed> {
    slots: &'a Slots<T>,
    waiter: Option<Arc<Waiter<T>>>,
}

impl<T: Homed> Future for Queued<'_, T> {
    type Output = Granted<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Granted<T>> {
        let Some(waiter) = &self.waiter else {
            // Polled again after it resolved: nothing more will come.
            return Poll::Ready(Err(Expired));
        };
        waiter.waker.register(cx.waker());
        match waiter.taken() {
            Some(granted) => {
                self.waiter = None;
                Poll::Ready(granted)
            }
            None => Poll::Pending,
        }
    }
}

impl<T: Homed> Drop for Queued<'_, T> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut st = self.slots.lock();
        if let Some(i) = st.waiting.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
            st.waiting.remove(i);
            return;
        }
        // Served in the meantime: what it was given goes to the next in line.
        if let Some(Ok(item)) = waiter.taken() {
            st.out -= 1;
            if let Some(item) = item {
                st.idle.push(item);
            }
            serve(&mut st, self.slots.fifo_within);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    const LONG: Duration = Duration::from_secs(3600);

    /// Test items: 0-99 live on thread 0, 100-199 on thread 1.
    impl Homed for u8 {
        fn home(&self) -> usize {
            usize::from(*self / 100)
        }
    }

    fn poll<T: Homed>(q: &mut Queued<'_, T>) -> Poll<Granted<T>> {
        Pin::new(q).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn queued<T: Homed>(t: Take<'_, T>) -> Queued<'_, T> {
        match t {
            Take::Queued(q) => q,
            Take::Now(_) => panic!("expected to wait"),
        }
    }

    #[test]
    fn a_returned_item_goes_to_the_oldest_waiter() {
        let slots = Slots::new(2);
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        let mut first = queued(slots.take(LONG, 0));
        let mut second = queued(slots.take(LONG, 0));
        assert!(poll(&mut first).is_pending());
        slots.put(7);
        assert_eq!(poll(&mut second), Poll::Pending);
        assert_eq!(poll(&mut first), Poll::Ready(Ok(Some(7))));
        slots.free();
        assert_eq!(poll(&mut second), Poll::Ready(Ok(None)));
        // Both slots are out again: a newcomer waits.
        assert!(matches!(slots.take(LONG, 0), Take::Queued(_)));
    }

    #[test]
    fn idle_items_are_reused_most_recent_first() {
        let slots = Slots::new(3);
        for _ in 0..3 {
            assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        }
        slots.put(1);
        slots.put(2);
        assert!(matches!(slots.take(LONG, 0), Take::Now(Some(2))));
        assert_eq!(slots.pop_idle(0), Some(1));
        assert_eq!(slots.with_idle(|v| v.len()), 0);
    }

    #[test]
    fn a_waiter_that_leaves_passes_on_what_it_was_given() {
        let slots = Slots::new(1);
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        let gone = queued(slots.take(LONG, 0));
        let mut next = queued(slots.take(LONG, 0));
        let mut left_early = queued(slots.take(LONG, 0));
        slots.put(5); // to `gone`, which leaves without looking
        drop(gone);
        assert_eq!(poll(&mut next), Poll::Ready(Ok(Some(5))));
        assert_eq!(slots.waiting(), 1);
        assert!(poll(&mut left_early).is_pending());
        drop(left_early);
        assert_eq!(slots.waiting(), 0);
        slots.put(5);
        assert!(matches!(slots.take(LONG, 0), Take::Now(Some(5))));
    }

    #[test]
    fn expire_answers_only_waiters_past_their_deadline() {
        let slots = Slots::<u8>::new(0);
        let mut short = queued(slots.take(Duration::from_millis(10), 0));
        let mut long = queued(slots.take(LONG, 0));
        assert_eq!(slots.expire(Instant::now()), 0);
        assert_eq!(slots.expire(Instant::now() + Duration::from_secs(1)), 1);
        assert_eq!(poll(&mut short), Poll::Ready(Err(Expired)));
        assert!(poll(&mut long).is_pending());
        slots.resize(1);
        assert_eq!(poll(&mut long), Poll::Ready(Ok(None)));
    }

    #[test]
    fn nudged_waiters_are_woken_and_stay_in_line() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let slots = Slots::<u8>::new(0);
        let mut waiter = queued(slots.take(LONG, 0));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(Pin::new(&mut waiter)
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        slots.nudge_waiting();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(poll(&mut waiter).is_pending());
        assert_eq!(slots.waiting(), 1);
    }

    #[test]
    fn a_smaller_size_holds_back_returned_slots() {
        let slots = Slots::new(2);
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        slots.resize(1);
        let mut waiter = queued(slots.take(LONG, 0));
        slots.put(1); // 2 out of 1 -> 1: still full
        assert!(poll(&mut waiter).is_pending());
        slots.put(2);
        assert_eq!(poll(&mut waiter), Poll::Ready(Ok(Some(2))));
    }

    #[test]
    fn a_returned_item_goes_to_the_oldest_waiter_of_its_home() {
        let slots = Slots::with_fifo_within(2, LONG);
        assert!(matches!(slots.take(LONG, 0), Take::Now(None)));
        assert!(matches!(slots.take(LONG, 1), Take::Now(None)));
        let mut first = queued(slots.take(LONG, 0));
        let mut second = queued(slots.take(LONG, 1));
        slots.put(105); // home 1: past the oldest waiter, to the second
        assert!(poll(&mut first).is_pending());
        assert_eq!(poll(&mut second), Poll::Ready(Ok(Some(105))));
        slots.put(5);
        assert_eq!(poll(&mut first), Poll::Ready(Ok(Some(5))));
        // A free slot of its own: an idle item of the taker's home first, else any.
        slots.put(106);
        slots.put(6);
        assert!(matches!(slots.take(LONG, 1), Take::Now(Some(106))));
        assert!(matches!(slots.take(LONG, 1), Take::Now(Some(6))));
    }

    #[test]
    fn line_order_across_homes_is_kept_within_fifo_within() {
        let within = Duration::from_millis(200);
        let slots = Slots::with_fifo_within(1, within);
        assert!(matches!(slots.take(LONG, 1), Take::Now(None)));
        let mut oldest = queued(slots.take(LONG, 0));
        let mut soon_after = queued(slots.take(LONG, 1));
        std::thread::sleep(within + Duration::from_millis(1));
        let mut later = queued(slots.take(LONG, 1));
        // Home 1's item: to the first waiter of home 1, who came within FIFO_WITHIN.
        slots.put(150);
        assert!(poll(&mut oldest).is_pending());
        assert_eq!(poll(&mut soon_after), Poll::Ready(Ok(Some(150))));
        // The next of home 1 came too late after the oldest: the oldest takes it.
        slots.put(150);
        assert_eq!(poll(&mut oldest), Poll::Ready(Ok(Some(150))));
        assert!(poll(&mut later).is_pending());
    }

    #[test]
    fn the_oldest_waiter_is_passed_over_a_bounded_number_of_times() {
        let slots = Slots::with_fifo_within(1, LONG);
        assert!(matches!(slots.take(LONG, 1), Take::Now(None)));
        let mut oldest = queued(slots.take(LONG, 0));
        let mut younger: Vec<_> = (0..=MAX_PASSED)
            .map(|_| queued(slots.take(LONG, 1)))
            .collect();
        for w in younger.iter_mut().take(MAX_PASSED as usize) {
            slots.put(150);
            assert!(poll(&mut oldest).is_pending());
            assert_eq!(poll(w), Poll::Ready(Ok(Some(150))));
        }
        // Passed over enough: the oldest takes the next item, though not of its home.
        slots.put(150);
        assert_eq!(poll(&mut oldest), Poll::Ready(Ok(Some(150))));
        assert!(poll(younger.last_mut().unwrap()).is_pending());
    }
}
