//! Connection budgets: the server connections open to one member for one database (all users
//! together) or as one user (all databases together), against `max_db_connections` and
//! `max_user_connections`. A connection holds an `Admission` from each of its budgets while it
//! is open; the count falls when it closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Budget {
    /// 0: no limit (connections are still counted).
    limit: AtomicUsize,
    open: AtomicUsize,
    /// Woken when a connection counted here closes.
    freed: Notify,
}

impl Budget {
    pub fn set_limit(&self, limit: usize) {
        if self.limit.swap(limit, Ordering::Relaxed) != limit {
            self.freed.notify_waiters();
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts one more connection if the limit allows it.
    /// Whether `open` connections leave room for one more.
    fn allows(&self, open: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || open < limit
    }

    /// Whether it has room for one more connection now.
    pub fn has_room(&self) -> bool {
        self.allows(self.open())
    }

    fn try_take(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                self.allows(n).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// Resolves when a connection counted here closes or the limit changes after this call
    /// (made before trying to be admitted, so no close between the two is missed).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

/// The budgets a new connection must fit in; which of them is full, if one is.
pub fn admit(budgets: &[&Arc<Budget>]) -> Result<Admission, usize> {
    let mut taken = Admission(Vec::with_capacity(budgets.len()));
    for (i, b) in budgets.iter().enumerate() {
        if !b.try_take() {
            // `taken` gives back what it holds when dropped.
            return Err(i);
        }
        taken.0.push(Arc::clone(b));
    }
    Ok(taken)
}

/// An open connection's place in its budgets, given back when dropped.
#[derive(Default)]
pub struct Admission(Vec<Arc<Budget>>);

impl Drop for Admission {
    fn drop(&mut self) {
        for b in self.0.drain(..) {
            b.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_admitted_up_to_every_limit_and_counted_until_dropped() {
        let db = Arc::new(Budget::default());
        let user = Arc::new(Budget::default());
        db.set_limit(2);
        let a = admit(&[&db, &user]).unwrap();
        let b = admit(&[&db, &user]).unwrap();
        assert_eq!(admit(&[&db, &user]).err(), Some(0));
        // The refused admission took nothing from the user's budget.
        assert_eq!((db.open(), user.open()), (2, 2));
        user.set_limit(2);
        db.set_limit(3);
        assert_eq!(admit(&[&db, &user]).err(), Some(1));
        assert_eq!((db.open(), user.open()), (2, 2));
        drop(a);
        assert_eq!((db.open(), user.open()), (1, 1));
        let _c = admit(&[&db, &user]).unwrap();
        drop(b);
        db.set_limit(0);
        user.set_limit(0);
        let more: Vec<_> = (0..10).map(|_| admit(&[&db, &user]).unwrap()).collect();
        assert_eq!(db.open(), 11);
        drop(more);
        assert_eq!(user.open(), 1);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_a_connection_closes() {
        let db = Arc::new(Budget::default());
        db.set_limit(1);
        let held = admit(&[&db]).unwrap();
        let waiter = {
            let db = db.clone();
            tokio::spawn(async move {
                loop {
                    let freed = db.freed();
                    if let Ok(a) = admit(&[&db]) {
                        return a;
                    }
                    freed.await;
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(db.open(), 1);
        drop(got);
    }
}
