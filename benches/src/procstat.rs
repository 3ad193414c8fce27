//! CPU time of processes, from `/proc/<pid>/stat`.

use std::io;

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by process `pid`.
pub fn process_cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
}

/// CPU ticks used so far by this process (all threads).
pub fn self_cpu_ticks() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    parse_cpu_ticks(&stat).ok_or_else(|| io::Error::other("unparsable /proc/self/stat"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's fixed user-visible value, when
/// that cannot be run).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU used by a set of server processes and by this (client) process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSample {
    /// Sum over the server processes that could be read.
    pub server_ticks: u64,
    /// This process.
    pub client_ticks: u64,
}

/// Reads a [`CpuSample`]. Servers that have exited are skipped.
pub fn sample_cpu(server_pids: &[u32]) -> CpuSample {
    CpuSample {
        server_ticks: server_pids.iter().filter_map(|&p| process_cpu_ticks(p).ok()).sum(),
        client_ticks: self_cpu_ticks().unwrap_or(0),
    }
}

/// Microseconds of CPU in `ticks` clock ticks.
pub fn ticks_to_us(ticks: u64, ticks_per_sec: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_sec.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let line = "4242 (tessera) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(325));
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "7 (weird (name) x) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(33));
    }

    #[test]
    fn truncated_or_garbled_lines_are_rejected() {
        assert_eq!(parse_cpu_ticks("12 (x) S 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 2 0"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let before = self_cpu_ticks().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(self_cpu_ticks().unwrap() > before, "60 ms of spinning shows in /proc/self/stat");
        assert_eq!(ticks_to_us(5, 100), 50_000.0);
    }
}
