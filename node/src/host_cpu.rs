//! How busy the CPUs of the node's host are, for PD's load splits
//! (`NodeStats::host_cpu_busy_pct`): a region split for its load helps only if some node
//! has CPU time to take a half's requests.
//!
//! Linux's `/proc/stat` counts the time all the host's CPUs spent in each state since boot.
//! Two readings some seconds apart give the share of that time spent busy: everything but
//! idle and waiting for I/O (time stolen by the hypervisor counts as busy: it was not
//! there to use). The meter keeps the readings of about the last [`WINDOW`] and reports the
//! share between the oldest and the newest. Time is passed in; the only I/O is
//! [`HostCpu::sample`]'s read of the file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The span the busy share is measured over (PD's load splits look at the same span of a
/// region's requests).
pub const WINDOW: Duration = Duration::from_secs(10);

/// Readings closer together than this say too little: no share is reported yet.
pub const MIN_SPAN: Duration = Duration::from_secs(2);

/// Cumulative CPU time of the host, in the kernel's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time neither idle nor waiting for I/O.
    pub busy: u64,
    /// All of it.
    pub total: u64,
}

/// The host's totals from the text of `/proc/stat` (its first line, `cpu  user nice system
/// idle iowait irq softirq steal guest guest_nice`; kernels before 2.6.33 stop earlier).
/// `guest` and `guest_nice` are already part of `user` and `nice`, so they are not added.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let mut fields = text.lines().next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if ticks.len() < 4 {
        return None;
    }
    let total = ticks.iter().try_fold(0u64, |sum, t| sum.checked_add(*t))?;
    let idle = ticks[3].checked_add(ticks.get(4).copied().unwrap_or(0))?;
    Some(CpuTimes { busy: total.checked_sub(idle)?, total })
}

/// The share of the host's CPU time spent busy between two readings, in percent (rounded).
/// `None` if no time passed or a counter went backwards.
pub fn busy_pct(from: CpuTimes, to: CpuTimes) -> Option<u8> {
    let total = to.total.checked_sub(from.total)?;
    let busy = to.busy.checked_sub(from.busy)?.min(total);
    if total == 0 {
        return None;
    }
    u8::try_from((busy * 100 + total / 2) / total).ok()
}

/// Readings of the host's CPU time over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct HostCpu {
    readings: VecDeque<(Instant, CpuTimes)>,
}

impl HostCpu {
    /// Adds a reading taken at `now`; returns the busy share from the oldest reading kept to
    /// this one, once they span at least [`MIN_SPAN`].
    pub fn record(&mut self, now: Instant, times: CpuTimes) -> Option<u8> {
        self.readings.push_back((now, times));
        // Keep the newest reading at least WINDOW old as the start of the span.
        while self.readings.get(1).is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW) {
            self.readings.pop_front();
        }
        let (since, first) = *self.readings.front()?;
        if now.saturating_duration_since(since) < MIN_SPAN {
            return None;
        }
        busy_pct(first, times)
    }

    /// Reads `/proc/stat` (a few hundred bytes from the kernel's memory) and records it.
    /// `None` where the file is missing or unreadable (not Linux) or too little time passed.
    pub fn sample(&mut self, now: Instant) -> Option<u8> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        self.record(now, parse_proc_stat(&text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  4705 356 584 3699176 23 0 15 7 0 0\ncpu0 1393 280 290 1857461 14 0 5 0 0 0\n";

    #[test]
    fn proc_stat_first_line_gives_busy_and_total() {
        // busy: user + nice + system + irq + softirq + steal; idle and iowait are not.
        let t = parse_proc_stat(STAT).unwrap();
        assert_eq!(t.total, 4705 + 356 + 584 + 3_699_176 + 23 + 15 + 7);
        assert_eq!(t.busy, 4705 + 356 + 584 + 15 + 7);
        // An old kernel's four fields.
        assert_eq!(parse_proc_stat("cpu 10 0 10 80\n"), Some(CpuTimes { busy: 20, total: 100 }));
    }

    #[test]
    fn malformed_proc_stat_gives_nothing() {
        for text in ["", "cpu0 1 2 3 4\n", "cpu 1 2 3\n", "cpu 1 2 x 4\n", "intr 1 2 3 4\n"] {
            assert_eq!(parse_proc_stat(text), None, "{text:?}");
        }
        let huge = format!("cpu {} {} 0 0\n", u64::MAX, u64::MAX);
        assert_eq!(parse_proc_stat(&huge), None);
    }

    #[test]
    fn busy_share_rounds_and_refuses_counters_going_back() {
        let at = |busy, total| CpuTimes { busy, total };
        assert_eq!(busy_pct(at(0, 0), at(85, 100)), Some(85));
        assert_eq!(busy_pct(at(0, 0), at(2, 3)), Some(67));
        assert_eq!(busy_pct(at(10, 10), at(10, 10)), None);
        assert_eq!(busy_pct(at(10, 100), at(5, 200)), None);
        assert_eq!(busy_pct(at(0, 100), at(0, 50)), None);
        // Never above 100, whatever the counters say.
        assert_eq!(busy_pct(at(0, 0), at(150, 100)), Some(100));
    }

    #[test]
    fn share_spans_the_last_window_once_long_enough() {
        let t0 = Instant::now();
        let mut meter = HostCpu::default();
        let reading = |secs: u64, busy: u64| (t0 + Duration::from_secs(secs), CpuTimes { busy, total: secs * 100 });
        // Too short a span at first.
        let (at, times) = reading(0, 0);
        assert_eq!(meter.record(at, times), None);
        let (at, times) = reading(1, 90);
        assert_eq!(meter.record(at, times), None);
        // 2 s in: 180 of 200 ticks busy.
        let (at, times) = reading(2, 180);
        assert_eq!(meter.record(at, times), Some(90));
        // The host goes idle from then on. The span starts at 0 s until a reading other
        // than the first is 10 s old, then moves on: the busy seconds leave it.
        let expected = [(3, 60), (4, 45), (5, 36), (6, 30), (7, 26), (8, 23), (9, 20), (10, 18), (11, 9), (12, 0)];
        for (secs, share) in expected {
            let (at, times) = reading(secs, 180);
            assert_eq!(meter.record(at, times), Some(share), "at {secs} s");
        }
        let (at, times) = reading(30, 180);
        assert_eq!(meter.record(at, times), Some(0));
        assert!(meter.readings.len() <= 3, "old readings are dropped: {}", meter.readings.len());
    }

    #[test]
    fn sampling_this_host_gives_a_share_in_range() {
        let mut meter = HostCpu::default();
        let t0 = Instant::now();
        if meter.sample(t0).is_none() && std::fs::metadata("/proc/stat").is_err() {
            return; // not Linux: nothing to read, and `sample` says so
        }
        // This kernel's own file parses, with some time counted and no more busy than all.
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        let times = parse_proc_stat(&text).unwrap_or_else(|| panic!("unparsed: {text:.200}"));
        assert!(times.total > 0 && times.busy <= times.total, "{times:?}");
        let share = meter.sample(t0 + MIN_SPAN);
        // The same counters read twice in a row may not have moved at all.
        assert!(share.is_none_or(|s| s <= 100), "{share:?}");
    }
}
