//! Placement flags shared by `tessera dev` and `tessera pd`: split and merge thresholds,
//! balance tolerances and how long a down node is waited for.

use std::time::Duration;

use tessera_pd::scheduler::SchedulerConfig;

/// Placement options (see `tessera pd --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// Split a region larger than this (bytes of keys and values; suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "96MiB", value_parser = parse_bytes)]
    pub region_split_bytes: u64,
    /// Split a region with more keys than this.
    #[arg(long, default_value_t = 960_000)]
    pub region_split_keys: u64,
    /// Split a region serving more reads plus writes per second than this for 10 s, where
    /// its load halves, while its leader's node carries over a quarter more than its share
    /// of the cluster's requests and the region more than half of that node's.
    #[arg(long, default_value_t = 3_000)]
    pub region_split_qps: u64,
    /// ...and while some node's host was busy less than this percentage of its CPU time
    /// over the last 10 s: when every host is busier, no node can take the halves' load,
    /// and more regions only cost CPU. 100: split whatever the CPU.
    #[arg(long, default_value_t = tessera_pd::scheduler::DEFAULT_SPLIT_MAX_HOST_BUSY_PCT,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub region_split_max_host_busy: u8,
    /// Merge two adjacent regions both smaller than this (default: split bytes / 5).
    #[arg(long, value_parser = parse_bytes)]
    pub region_merge_bytes: Option<u64>,
    /// ...and both with fewer keys than this (default: split keys / 5).
    #[arg(long)]
    pub region_merge_keys: Option<u64>,
    /// A region split less than this long ago is not merged (e.g. 1h, 10m, 30s).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub split_merge_interval: Duration,
    /// Re-create the replicas of a node down for longer than this elsewhere (e.g. 30m, 20s).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub max_down_time: Duration,
    /// Largest tolerated difference of replica counts between two nodes.
    #[arg(long, default_value_t = 2)]
    pub region_tolerance: u64,
    /// Largest tolerated difference of leader counts between two nodes.
    #[arg(long, default_value_t = 1)]
    pub leader_tolerance: u64,
}

impl PlacementArgs {
    /// The scheduler configuration for `replicas` voters per region.
    pub fn scheduler(&self, replicas: usize) -> SchedulerConfig {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        SchedulerConfig {
            replicas,
            max_down_time_ms: ms(self.max_down_time),
            region_tolerance: self.region_tolerance,
            leader_tolerance: self.leader_tolerance,
            split_bytes: self.region_split_bytes,
            split_keys: self.region_split_keys,
            merge_bytes: self.region_merge_bytes.unwrap_or(self.region_split_bytes / 5),
            merge_keys: self.region_merge_keys.unwrap_or(self.region_split_keys / 5),
            split_merge_interval_ms: ms(self.split_merge_interval),
            hot_qps: self.region_split_qps,
            split_max_host_busy_pct: self.region_split_max_host_busy,
            ..SchedulerConfig::default()
        }
    }
}

/// `123`, `64KiB`, `96MiB`, `1GiB` (also `KB`/`MB`/`GB`, meaning the same powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 65536, 64KiB, 96MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// `500ms`, `30s`, `10m`, `2h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 10m, 1h)"))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("96MiB"), Ok(96 << 20));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert!(parse_duration("1 fortnight").is_err());
    }

    #[test]
    fn defaults_make_a_valid_scheduler_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            p: PlacementArgs,
        }
        let cli = Cli::parse_from(["x"]);
        let cfg = cli.p.scheduler(3);
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.split_bytes, 96 << 20);
        let small = Cli::parse_from(["x", "--region-split-bytes", "64KiB", "--max-down-time", "5s"]).p.scheduler(3);
        assert_eq!(small.validate(), Ok(()));
        assert_eq!((small.split_bytes, small.merge_bytes, small.max_down_time_ms), (65536, 13107, 5000));
        assert_eq!(cfg.split_max_host_busy_pct, 80);
        let off = Cli::parse_from(["x", "--region-split-max-host-busy", "100"]).p.scheduler(3);
        assert_eq!(off.split_max_host_busy_pct, 100);
        for bad in ["0", "101", "-5", "half"] {
            assert!(Cli::try_parse_from(["x", "--region-split-max-host-busy", bad]).is_err(), "{bad}");
        }
    }
}
