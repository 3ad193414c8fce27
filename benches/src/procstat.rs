//! CPU time of processes, from `/proc/<pid>/stat`, and the bytes written to a block
//! device, from its kernel statistics.

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

/// The block device a directory is on, whose kernel statistics count every byte written
/// to it (`/sys/dev/block/<major>:<minor>/stat`).
///
/// Not the processes' `write_bytes` (`/proc/<pid>/io`): that counts a page when a process
/// dirties it, and a kernel that caches files in large folios counts the whole folio for a
/// small append into a clean one. On this project's machine (Linux 6.18, ext4) a Tessera
/// node's log writer showed about 85 KiB of `write_bytes` per sequential put while the
/// device took about 5 KiB per put and node (issue 6's twenty-fourth note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    stat: std::path::PathBuf,
}

impl BlockDevice {
    /// The device holding `path`; `None` if it is not on a block device with statistics
    /// (tmpfs, overlay file systems, a kernel without sysfs).
    pub fn of(path: &std::path::Path) -> Option<BlockDevice> {
        use std::os::unix::fs::MetadataExt;
        let (major, minor) = dev_numbers(std::fs::metadata(path).ok()?.dev());
        let stat = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
        let dev = BlockDevice { stat };
        dev.written_bytes().map(|_| dev)
    }

    /// Bytes written to the device since boot.
    pub fn written_bytes(&self) -> Option<u64> {
        parse_written_sectors(&std::fs::read_to_string(&self.stat).ok()?).map(|s| s * 512)
    }
}

/// The major and minor numbers of a Linux `dev_t` (glibc's `gnu_dev_major`/`minor`).
fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// Sectors written (the 7th field; always 512-byte units) of a block device's `stat`.
fn parse_written_sectors(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(6)?.parse().ok()
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

/// CPU used by a set of server processes and by this (client) process, and the bytes
/// written to the servers' block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSample {
    /// Sum over the server processes that could be read.
    pub server_ticks: u64,
    /// This process.
    pub client_ticks: u64,
    /// [`BlockDevice::written_bytes`] of the servers' device, if known.
    pub disk_written_bytes: Option<u64>,
}

/// Reads a [`CpuSample`]. Servers that have exited are skipped.
pub fn sample_cpu(server_pids: &[u32], disk: Option<&BlockDevice>) -> CpuSample {
    CpuSample {
        server_ticks: server_pids.iter().filter_map(|&p| process_cpu_ticks(p).ok()).sum(),
        client_ticks: self_cpu_ticks().unwrap_or(0),
        disk_written_bytes: disk.and_then(BlockDevice::written_bytes),
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
    fn device_numbers_follow_the_linux_dev_t_encoding() {
        assert_eq!(dev_numbers(0xfe00), (254, 0));
        assert_eq!(dev_numbers(0x0801), (8, 1));
        // Minors above 255 and majors above 4095 use the high bits.
        assert_eq!(dev_numbers((259 << 8) | (0x12 << 20) | 0x34), (259, 0x1234));
        assert_eq!(dev_numbers((0x1000u64 << 32) | (1 << 8)), (0x1001, 0));
    }

    #[test]
    fn written_sectors_are_the_seventh_field() {
        let stat =
            " 1836481    42710 84173482  3122532 36735521  1597546 670086256 11964989        0  1940300 15811883";
        assert_eq!(parse_written_sectors(stat), Some(670_086_256));
        assert_eq!(parse_written_sectors("1 2 3"), None);
        assert_eq!(parse_written_sectors("1 2 3 4 5 6 lots"), None);
    }

    /// Written and synced, a file's bytes reach its device's count.
    #[test]
    fn a_synced_write_shows_in_its_devices_count() {
        let dir = tempfile::tempdir().unwrap();
        let Some(dev) = BlockDevice::of(dir.path()) else {
            // tmpfs or no sysfs: nothing to count.
            return;
        };
        let before = dev.written_bytes().unwrap();
        let mut f = std::fs::File::create(dir.path().join("x")).unwrap();
        std::io::Write::write_all(&mut f, &vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let after = dev.written_bytes().unwrap();
        assert!(after >= before + (1 << 20), "1 MiB written and synced: {before} -> {after}");
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
