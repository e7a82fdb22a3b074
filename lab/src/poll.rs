//! Polling until a condition holds, with a deadline.

use anyhow::{anyhow, Result};
use std::fmt;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// An error that makes [`wait_for`] give up at once instead of retrying.
#[derive(Debug)]
pub(crate) struct Abort(pub String);

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Abort {}

/// Call `f` every `step` until it returns `Ok(Some(_))`, or fail after `timeout`.
///
/// `Ok(None)` and `Err(_)` both mean "not yet", except an error built from [`Abort`], which is
/// returned at once. The timeout error carries the last error, so callers see why the condition
/// never held.
pub(crate) fn wait_for<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last_err = None,
            Err(e) if e.downcast_ref::<Abort>().is_some() => return Err(e),
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            let secs = timeout.as_secs_f32();
            return Err(match last_err {
                Some(e) => e.context(format!("still not ready after {secs:.0}s")),
                None => anyhow!("condition not met after {secs:.0}s"),
            });
        }
        sleep(step);
    }
}

/// Time left until `deadline` (zero if it passed).
pub(crate) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_ready_or_timeout() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok((n == 3).then_some(n))
        });
        assert_eq!(v.unwrap(), 3);
        let e = wait_for::<()>(Duration::from_millis(5), Duration::from_millis(1), || {
            Err(anyhow!("nope"))
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("nope"));
    }

    #[test]
    fn abort_stops_at_once() {
        let mut n = 0;
        let e = wait_for::<()>(Duration::from_secs(60), Duration::from_millis(1), || {
            n += 1;
            Err(Abort("boom".into()).into())
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert_eq!(e.to_string(), "boom");
    }
}
