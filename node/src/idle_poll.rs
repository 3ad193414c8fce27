//! Idle polling: a thread that keeps one CPU awake for a moment after request traffic.
//!
//! Every message between processes ends in a wake-up of the thread that receives it. When
//! that thread's CPU has nothing else to run, a virtual machine's vCPU halts, and resuming
//! a halted vCPU takes the hypervisor tens of microseconds (67-87 µs on the 2-core VM of
//! issue 6, whose guest does not poll before it halts: `guest_halt_poll_ns=0`). A
//! sequential put crosses four such messages and a disk completion, so on an otherwise
//! idle machine these resumptions are a large share of its latency.
//!
//! While requests arrive, the poller spins in the lowest scheduling class (`SCHED_IDLE`):
//! any runnable thread preempts it at once, and the scheduler places a woken thread on a
//! CPU that runs only `SCHED_IDLE` work as it would on an idle one, but that CPU has not
//! halted, so the wake-up costs a context switch rather than a vCPU's resumption.
//! Seastar's reactor polls likewise before it sleeps (`--idle-poll-time-us`).
//!
//! It polls under light load only: while more than [`LIGHT_LOAD`] requests are in flight on
//! the node, and for a window after, it does not. Spinning under load cost throughput on
//! the 2-core VM: puts at 256 in flight went from 24.0k to 19.6k per second with a poller
//! that spun after every request, and from 24.5k to 14.7k with two `SCHED_IDLE` busy loops
//! beside the cluster. Most likely because a CPU that runs a `SCHED_IDLE` thread never
//! goes idle, and it is on going idle that a CPU pulls runnable threads queued on a busy
//! one (new-idle balancing), so threads wait on one CPU while the other spins. Under load
//! the CPUs seldom idle anyway, so there is little to gain there.
//!
//! Where the kernel already polls before halting an idle CPU, the poller stays off: a
//! virtual machine's guest with the `haltpoll` cpuidle driver and `guest_halt_poll_ns`
//! above zero (the kernel's default is 200 µs; the issue-6 VM boots with 0) spins in its
//! idle loop, so a woken thread finds its vCPU running without a thread of ours competing
//! for the CPUs. Measured on that VM with 200 µs set (issue 6's thirty-fourth note): the
//! sequential put's p50 490-502 µs and p99 1.17-1.25 ms with this poller off, against
//! 611-635 µs and 1.53-1.58 ms with it on. [`kernel_halt_poll_ns`] reads the setting,
//! once, at start.
//!
//! What it costs: CPU time while light traffic flows and the CPUs would otherwise idle. It
//! shows as busy in `top` and counts against a cgroup's CPU quota (a container with a hard
//! quota should turn it off: `tessera node --idle-poll-us 0`), and it delays the
//! balancing of other programs' threads on a shared machine as above. Once no request has
//! arrived for the window, the thread parks and costs nothing.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Spin-loop hints per check of the clock and the stop flag.
const SPINS_PER_ROUND: u32 = 64;

/// Requests in flight on the node beyond which it does not poll (see the module docs).
pub(crate) const LIGHT_LOAD: u32 = 2;

/// The poller of one node: [`IdlePoller::request`] for each request that brings work.
#[derive(Debug)]
pub(crate) struct IdlePoller {
    shared: Arc<Shared>,
    thread: Thread,
    handle: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    window_ns: u64,
    /// The time (`Shared::now_ns`) of the last request.
    last_request_ns: AtomicU64,
    /// No polling before this time: a request found more than [`LIGHT_LOAD`] in flight.
    busy_until_ns: AtomicU64,
    in_flight: AtomicU32,
    /// The thread is parked or about to park; a request must unpark it.
    parked: AtomicBool,
    stop: AtomicBool,
    /// Rounds spun so far (each [`SPINS_PER_ROUND`] hints).
    rounds: AtomicU64,
    requests: AtomicU64,
    /// The thread's id (`/proc/self/task/<tid>`), for tests.
    #[cfg(test)]
    tid: std::sync::OnceLock<String>,
}

impl Shared {
    /// Nanoseconds since `epoch`, plus the window: the initial `last_request_ns` of 0 then
    /// lies a window in the past, so the poller starts cold.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).saturating_add(self.window_ns)
    }

    fn hot(&self) -> bool {
        let (last_request, busy_until) =
            (self.last_request_ns.load(Ordering::SeqCst), self.busy_until_ns.load(Ordering::SeqCst));
        polls(self.now_ns(), last_request, busy_until, self.window_ns)
    }
}

/// Whether to poll at `now`: a request came within the window, and no request found the
/// node under load within the window before. A request under load marks `busy_until` as
/// its own time plus the window, so the window of that request brings no polling, and
/// only a later request under light load can.
fn polls(now: u64, last_request: u64, busy_until: u64, window: u64) -> bool {
    now.saturating_sub(last_request) < window && now >= busy_until
}

/// The name of the cpuidle driver in use.
const CPUIDLE_DRIVER: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
/// The `haltpoll` driver's longest poll before halting, in ns.
const GUEST_HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// How long (ns) the kernel polls before halting an idle CPU, from the contents of
/// [`CPUIDLE_DRIVER`] and [`GUEST_HALT_POLL_NS`] (`None` where a file is missing): the
/// poll time when the `haltpoll` driver is in use and polls at all, else `None`.
fn kernel_halt_polls(driver: Option<&str>, poll_ns: Option<&str>) -> Option<u64> {
    if driver?.trim() != "haltpoll" {
        return None;
    }
    poll_ns?.trim().parse::<u64>().ok().filter(|&ns| ns > 0)
}

/// How long (ns) this machine's kernel polls before halting an idle CPU, if it does (the
/// `haltpoll` cpuidle driver with `guest_halt_poll_ns` above zero); a node then runs no
/// idle poller (see the module docs).
pub fn kernel_halt_poll_ns() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    kernel_halt_polls(read(CPUIDLE_DRIVER).as_deref(), read(GUEST_HALT_POLL_NS).as_deref())
}

impl IdlePoller {
    /// Starts a poller that spins for `window` after each request; `None` for a zero
    /// window, where the kernel polls before halting an idle CPU (see the module docs), or
    /// where the thread cannot run in the idle class (it must never compete with work, so
    /// it does not run at all then).
    pub(crate) fn start(window: Duration) -> Option<IdlePoller> {
        if window.is_zero() {
            return None;
        }
        if let Some(ns) = kernel_halt_poll_ns() {
            tracing::info!(
                guest_halt_poll_ns = ns,
                "idle polling off: the kernel polls before halting an idle CPU (haltpoll)"
            );
            return None;
        }
        Self::start_polling(window)
    }

    /// [`IdlePoller::start`] whatever the kernel does.
    fn start_polling(window: Duration) -> Option<IdlePoller> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            // Cold at start (see `now_ns`): the first request wakes it.
            last_request_ns: AtomicU64::new(0),
            busy_until_ns: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            #[cfg(test)]
            tid: Default::default(),
        });
        let (ready, is_ready) = std::sync::mpsc::sync_channel(1);
        let inner = shared.clone();
        let spawned = std::thread::Builder::new().name("idle-poll".into()).spawn(move || {
            #[cfg(test)]
            if let Some(tid) = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()))
            {
                let _ = inner.tid.set(tid);
            }
            let idle_class = lowest_class();
            let ok = idle_class.is_ok();
            let _ = ready.send(idle_class);
            if ok {
                run(&inner);
            }
        });
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "idle polling off: cannot start its thread");
                return None;
            }
        };
        // Waits for the thread's start only (it sets its class and answers).
        match is_ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::warn!(reason = %reason, "idle polling off: its thread cannot run in the idle class");
                let _ = handle.join();
                return None;
            }
            Err(_) => {
                tracing::warn!("idle polling off: its thread ended at start");
                return None;
            }
        }
        Some(IdlePoller { thread: handle.thread().clone(), shared, handle: Some(handle) })
    }

    /// A request that brings work begins (a client request, a replication message with
    /// entries); it ends when the guard drops. Under light load, a CPU stays awake until
    /// the window has passed without one.
    pub(crate) fn request(&self) -> InFlight<'_> {
        let s = &self.shared;
        let in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let now = s.now_ns();
        if in_flight > LIGHT_LOAD {
            // Its window ends with the busy mark's, so no polling until the next request.
            s.busy_until_ns.fetch_max(now.saturating_add(s.window_ns), Ordering::SeqCst);
        }
        // Ordering: the poller stores `parked` and then reads the time of the last request;
        // this writes the time and then reads `parked` (all SeqCst), so either the poller
        // sees this request and does not park, or this sees it parked and unparks it.
        s.last_request_ns.fetch_max(now, Ordering::SeqCst);
        if in_flight <= LIGHT_LOAD && s.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        s.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { shared: s }
    }

    /// Requests so far.
    pub(crate) fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Rounds spun so far.
    #[cfg(test)]
    fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Whether the thread is parked (or about to park).
    #[cfg(test)]
    fn parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// The thread's id.
    #[cfg(test)]
    fn tid(&self) -> String {
        self.shared.tid.get().cloned().expect("the thread reads its id before it is ready")
    }
}

/// A request in flight (see [`IdlePoller::request`]).
#[must_use = "the request is in flight until this drops"]
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    shared: &'a Shared,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for IdlePoller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Spins while requests arrive, parks otherwise, until stopped.
fn run(s: &Shared) {
    while !s.stop.load(Ordering::Relaxed) {
        if s.hot() {
            for _ in 0..SPINS_PER_ROUND {
                std::hint::spin_loop();
            }
            s.rounds.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        // See `IdlePoller::request` for why this second look cannot miss a request.
        if !s.hot() && !s.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        s.parked.store(false, Ordering::SeqCst);
    }
}

/// Moves the calling thread to `SCHED_IDLE`.
#[cfg(target_os = "linux")]
fn lowest_class() -> Result<(), String> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, idle)
        .map_err(|e| format!("{e:?}"))
}

/// Elsewhere there is no class that never competes with work: no polling.
#[cfg(not(target_os = "linux"))]
fn lowest_class() -> Result<(), String> {
    Err("idle polling needs Linux's SCHED_IDLE".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for `cond`, failing after 10 s.
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn thread_exists(tid: &str) -> bool {
        std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    }

    /// Field 41 of `/proc/self/task/<tid>/stat`: the scheduling policy.
    fn policy_of(tid: &str) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the command, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn a_zero_window_starts_no_poller() {
        assert!(IdlePoller::start(Duration::ZERO).is_none());
    }

    #[test]
    fn the_poller_stays_off_only_where_the_haltpoll_driver_polls() {
        assert_eq!(kernel_halt_polls(Some("haltpoll\n"), Some("200000\n")), Some(200_000));
        assert_eq!(kernel_halt_polls(Some("haltpoll\n"), Some("0\n")), None, "this VM's setting: no polling");
        assert_eq!(kernel_halt_polls(Some("intel_idle\n"), Some("200000\n")), None, "another driver");
        assert_eq!(kernel_halt_polls(Some("haltpoll\n"), None), None, "no haltpoll module");
        assert_eq!(kernel_halt_polls(None, Some("200000")), None, "no cpuidle");
        assert_eq!(kernel_halt_polls(Some("haltpoll"), Some("garbage")), None);
    }

    #[test]
    fn polling_follows_the_last_request_and_stops_for_a_window_after_one_under_load() {
        let w = 1_000;
        // Light load: from each request for a window.
        assert!(polls(500, 500, 0, w));
        assert!(polls(1_499, 500, 0, w));
        assert!(!polls(1_500, 500, 0, w));
        // A request at 500 found the node busy (busy until 1,500): no polling in its
        // window, even for a light request at 800 ...
        assert!(!polls(800, 800, 1_500, w));
        assert!(!polls(1_499, 800, 1_500, w));
        // ... until the busy mark passes, for what is left of the light request's window.
        assert!(polls(1_500, 800, 1_500, w));
        assert!(!polls(1_800, 800, 1_500, w));
        // With no later request, the busy request's own window brings none.
        assert!(!polls(1_500, 500, 1_500, w));
    }

    #[test]
    fn the_poller_spins_in_the_idle_class_after_a_request_and_parks_once_the_window_passed() {
        let window = Duration::from_millis(30);
        let poller = IdlePoller::start_polling(window).expect("idle polling starts on Linux");
        assert_eq!(policy_of(&poller.tid()), 5, "SCHED_IDLE");

        // Cold until the first request. A busy machine may not run an idle-class thread
        // within a window, so requests go on until it has spun.
        wait_for("the first park", || poller.parked());
        let before = poller.rounds();
        let mut sent = Instant::now();
        wait_for("spinning", || {
            sent = Instant::now();
            drop(poller.request());
            poller.rounds() > before
        });
        wait_for("the park after the window", || poller.parked());
        assert!(sent.elapsed() >= window, "parked {:?} after the request", sent.elapsed());

        // Parked, it spins no more until the next request.
        let parked_at = poller.rounds();
        std::thread::sleep(window);
        assert_eq!(poller.rounds(), parked_at);
        wait_for("spinning again", || {
            drop(poller.request());
            poller.rounds() > parked_at
        });
    }

    #[test]
    fn the_poller_does_not_spin_while_more_than_a_light_load_is_in_flight() {
        // A window longer than the test: only the load can stop the spinning.
        let poller = IdlePoller::start_polling(Duration::from_secs(60)).unwrap();
        wait_for("the first park", || poller.parked());
        let light: Vec<_> = (0..LIGHT_LOAD).map(|_| poller.request()).collect();
        let before = poller.rounds();
        wait_for("spinning under a light load", || poller.rounds() > before);

        // One more in flight: the node is busy. The poller parks and stays parked, though
        // the request is well within the window.
        let busy = poller.request();
        wait_for("the park under load", || poller.parked());
        let parked_at = poller.rounds();
        std::thread::sleep(Duration::from_millis(20));
        assert!(poller.parked());
        assert_eq!(poller.rounds(), parked_at, "spun under load");
        drop((busy, light));
    }

    #[test]
    fn dropping_the_poller_ends_its_thread() {
        let poller = IdlePoller::start_polling(Duration::from_secs(60)).unwrap();
        drop(poller.request());
        wait_for("spinning", || poller.rounds() > 0);
        let tid = poller.tid();
        assert!(thread_exists(&tid));
        drop(poller);
        // The thread's /proc entry goes a moment after `join` returns.
        wait_for("the thread's end", || !thread_exists(&tid));
    }
}
