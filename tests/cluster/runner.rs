//! The scenario runner: selection from the command line, one scenario at a time on a runtime
//! of its own, a panic, an error or a timeout counted as that scenario's failure, skips shown
//! as skips, and the closing `N passed, M failed` line on every way out.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrouter_lab::Lab;

use crate::TestFn;

/// How long one scenario may run, unless `PGROUTER_SCENARIO_TIMEOUT_SECS` says otherwise.
const DEFAULT_LIMIT: Duration = Duration::from_secs(900);
/// Past its limit, a scenario stuck where the timeout cannot reach it (a blocking call) is
/// given this long before the whole run ends.
const GRACE: Duration = Duration::from_secs(120);
/// How long the lab may take to be healthy again after a scenario.
const HEALTHY_AFTER: Duration = Duration::from_secs(180);
/// At most how long undoing a failed scenario's faults takes (starting etcd, members).
const UNDO: Duration = Duration::from_secs(120);

/// A scenario that cannot run on this machine returns this error (say why): it is counted and
/// shown as skipped, never as passed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

/// What the command line asks for (the arguments `cargo test` passes on, libtest's flags
/// understood or ignored).
#[derive(Debug, Default)]
pub struct Args {
    pub filters: Vec<String>,
    pub skips: Vec<String>,
    pub exact: bool,
    pub list: bool,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Args {
        let mut parsed = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => parsed.list = true,
                "--exact" => parsed.exact = true,
                "--skip" => parsed.skips.extend(args.next()),
                // libtest flags that take a value as the next argument.
                "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                _ => parsed.filters.push(arg),
            }
        }
        parsed
    }

    pub fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }
}

#[derive(Debug, Default)]
pub struct Tally {
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
}

impl Tally {
    /// The closing lines (libtest's and the plain one) and the exit code.
    pub fn exit_code(&self) -> ExitCode {
        println!();
        for name in &self.failed {
            println!("failed: {name}");
        }
        for name in &self.skipped {
            println!("skipped: {name}");
        }
        println!(
            "test result: {}. {} passed; {} failed; {} ignored",
            if self.failed.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            self.passed,
            self.failed.len(),
            self.skipped.len()
        );
        println!("{}", self.line());
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn line(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed.len());
        if !self.skipped.is_empty() {
            line += &format!(", {} skipped", self.skipped.len());
        }
        line
    }
}

/// The scenario running now, for the watchdog.
struct Now {
    name: &'static str,
    /// When the run ends if the scenario has not returned by then.
    hard_deadline: Instant,
}

struct Shared {
    tally: Tally,
    now: Option<Now>,
    left: Vec<&'static str>,
    done: bool,
}

/// Runs `scenarios` in order on `lab`; a watchdog ends the process (with the closing line) if
/// one is stuck past its limit and [`GRACE`].
pub fn run(lab: &Lab, scenarios: &[&(&'static str, TestFn)]) -> Tally {
    let shared = Mutex::new(Shared {
        tally: Tally::default(),
        now: None,
        left: scenarios.iter().map(|(name, _)| *name).collect(),
        done: false,
    });
    std::thread::scope(|scope| {
        scope.spawn(|| watchdog(lab, &shared));
        for (name, test) in scenarios {
            let limit = limit(name);
            {
                let mut s = lock(&shared);
                s.left.retain(|n| n != name);
                s.now = Some(Now {
                    name,
                    hard_deadline: Instant::now() + limit + GRACE,
                });
            }
            println!("--- {name} (limit {}s)", limit.as_secs());
            let t0 = Instant::now();
            let outcome = run_one(lab, *test, limit);
            // Undoing faults and waiting for health have limits of their own.
            if let Some(now) = lock(&shared).now.as_mut() {
                now.hard_deadline = Instant::now() + 2 * HEALTHY_AFTER + UNDO + GRACE;
            }
            if !matches!(outcome, Outcome::Passed) {
                // A scenario that failed midway may have left a member cut off, frozen or
                // killed, or etcd stopped: the rest cannot run on such a lab.
                match lab.undo_faults() {
                    Ok(undone) if undone.is_empty() => {}
                    Ok(undone) => println!("  undone after it: {}", undone.join(", ")),
                    Err(e) => println!("  could not undo its faults: {e:#}"),
                }
            }
            let healthy = lab.wait_healthy(HEALTHY_AFTER).or_else(|e| {
                // Patroni can leave a replica it will not bring back by itself; rebuild it
                // as an operator would, and say so.
                match lab.reinit_replicas_not_streaming() {
                    Ok(rebuilt) if !rebuilt.is_empty() => {
                        println!("  {e:#}");
                        println!(
                            "  reinitialized {} (patronictl reinit): Patroni did not bring it back",
                            rebuilt.join(", ")
                        );
                        lab.wait_healthy(HEALTHY_AFTER)
                    }
                    _ => Err(e),
                }
            });
            let took = t0.elapsed().as_secs_f64();
            let mut s = lock(&shared);
            s.now = None;
            match (outcome, healthy) {
                (Outcome::Passed, Ok(())) => {
                    s.tally.passed += 1;
                    println!("test {name} ... ok ({took:.1}s)");
                }
                (Outcome::Skipped(why), Ok(())) => {
                    s.tally.skipped.push(format!("{name}: {why}"));
                    println!("test {name} ... skipped: {why}");
                }
                (outcome, healthy) => {
                    s.tally.failed.push((*name).to_owned());
                    println!("test {name} ... FAILED ({took:.1}s)");
                    match outcome {
                        Outcome::Failed(why) => println!("  {why}"),
                        Outcome::Skipped(why) => println!("  skipped: {why}"),
                        Outcome::Passed => {}
                    }
                    if let Err(e) = healthy {
                        println!("  cluster not healthy afterwards: {e:#}");
                    }
                }
            }
        }
        lock(&shared).done = true;
    });
    shared.into_inner().unwrap_or_else(|p| p.into_inner()).tally
}

fn lock<'a>(shared: &'a Mutex<Shared>) -> std::sync::MutexGuard<'a, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// One scenario on a runtime of its own, dropped afterwards so that nothing it spawned (a
/// probe, a client) outlives it.
fn run_one(lab: &Lab, test: TestFn, limit: Duration) -> Outcome {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return Outcome::Failed(format!("no tokio runtime: {e}")),
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        // The timer is made inside the runtime: it needs its clock.
        runtime.block_on(async { tokio::time::timeout(limit, test(lab)).await })
    }));
    runtime.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(Ok(Ok(()))) => Outcome::Passed,
        Ok(Ok(Err(e))) => match e.downcast_ref::<Skip>() {
            Some(Skip(why)) => Outcome::Skipped(why.clone()),
            None => Outcome::Failed(format!("{e:#}")),
        },
        Ok(Err(_)) => Outcome::Failed(format!(
            "timed out after {}s (PGROUTER_SCENARIO_TIMEOUT_SECS)",
            limit.as_secs()
        )),
        Err(panic) => Outcome::Failed(format!("panicked: {}", panic_text(&*panic))),
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// The time limit of scenario `name`: the default or `PGROUTER_SCENARIO_TIMEOUT_SECS`, plus the
/// soak's own length for the soak.
fn limit(name: &str) -> Duration {
    let base = std::env::var("PGROUTER_SCENARIO_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIMIT);
    if name.starts_with("soak") {
        base + crate::soak::duration()
    } else {
        base
    }
}

/// Ends the run if a scenario is still running past its hard deadline: it is stuck outside the
/// timeout's reach, and the rest cannot share the lab with it.
fn watchdog(lab: &Lab, shared: &Mutex<Shared>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let mut s = lock(shared);
        if s.done {
            return;
        }
        let Some(now) = s.now.as_ref().filter(|n| Instant::now() > n.hard_deadline) else {
            continue;
        };
        let name = now.name;
        println!(
            "test {name} ... FAILED (still running {}s past its limit: stuck in a blocking call; the run ends here)",
            GRACE.as_secs()
        );
        s.tally.failed.push(name.to_owned());
        let left = std::mem::take(&mut s.left);
        for name in left {
            println!("test {name} ... FAILED (not run: the run ended early)");
            s.tally.failed.push(name.to_owned());
        }
        lab.abort();
        let _ = s.tally.exit_code();
        std::process::exit(1);
    }
}
