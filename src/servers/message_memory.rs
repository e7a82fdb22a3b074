//! The memory all pooled clients' large messages may hold together (`pool.message_memory`).
//!
//! A pooled session keeps a Query, Parse, Bind or other message whole before it goes to a
//! server (it reads them to rename statements, track settings and count answers), up to 256 MiB
//! each. Passthrough sessions stream, so only pooled clients can make pgrouter hold such
//! memory, and many at once could exhaust it. A message of [`COUNTED_FROM`] bytes or more takes
//! its length from this budget while it is being received and until its transaction ends; one
//! that does not fit is refused with FATAL 53200, and the other clients go on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Messages this long or longer are counted; shorter ones (almost all) cost nothing.
pub const COUNTED_FROM: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct MessageMemory {
    in_use: AtomicUsize,
}

/// Bytes taken from the budget; given back when dropped.
#[derive(Debug)]
pub struct Grant {
    memory: Arc<MessageMemory>,
    bytes: usize,
}

impl MessageMemory {
    /// Takes `bytes` if the budget, `limit`, has room; else the bytes in use by others.
    pub fn grant(self: &Arc<Self>, bytes: usize, limit: usize) -> Result<Grant, usize> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })?;
        Ok(Grant {
            memory: self.clone(),
            bytes,
        })
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

impl Grant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.memory.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_share_one_limit_and_give_back_when_dropped() {
        let memory = Arc::new(MessageMemory::default());
        let a = memory.grant(6 << 20, 8 << 20).unwrap();
        assert_eq!(memory.in_use(), 6 << 20);
        assert_eq!(memory.grant(3 << 20, 8 << 20).unwrap_err(), 6 << 20);
        let b = memory.grant(2 << 20, 8 << 20).unwrap();
        assert_eq!((a.bytes(), b.bytes()), (6 << 20, 2 << 20));
        drop(a);
        assert_eq!(memory.in_use(), 2 << 20);
        let c = memory.grant(6 << 20, 8 << 20).unwrap();
        drop((b, c));
        assert_eq!(memory.in_use(), 0);
        assert!(memory.grant(usize::MAX, usize::MAX).is_ok());
        assert_eq!(memory.in_use(), 0);
    }
}
