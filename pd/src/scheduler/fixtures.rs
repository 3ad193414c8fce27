//! Data-driven scheduler tests: every file in `fixtures/` is one case.
//!
//! # Format
//!
//! One directive per line; `#` starts a comment line, blank lines are ignored.
//!
//! ```text
//! config <field>=<value> ...          overrides of SchedulerConfig::default()
//! node n1 [down=<ms>] [draining] [regions=N] [leaders=N] [used=<bytes>] [capacity=<bytes>]
//!         [cpu=<percent>]
//! region r1 range=<start>..<end> epoch=<conf_ver>/<version> voters=p1@n1,p2@n2,p3@n3
//!        [learners=p4@n4] [leader=p1@n1|none] [size=<bytes>] [keys=N]
//!        [wqps=N] [rqps=N] [since_split=<ms>]
//! inflight <operator>
//! expect <operator>                   one per expected operator, in order
//! expect none                         no operator at all
//! ```
//!
//! A node is up unless `down=` is given; `cpu` is its host's CPU busy share in percent
//! (unknown if absent). `regions`/`leaders` default to the counts the fixture's regions
//! imply (voters and learners; leaders). A region's leader defaults to its first voter; its
//! statistics default to 0 and `since_split` to 0 (so it never merges unless the fixture
//! says so). Keys in `range` are ASCII, an empty end is unbounded.
//! Numbers take `_` separators and the suffixes `KiB`, `MiB`, `GiB` (bytes) and `ms`, `s`,
//! `min`, `h` (milliseconds). Operators are written exactly as their `Display` form, e.g.
//! `r1 1/1 add-learner n4 because down-voter n3`; the parser checks the round trip.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_wire::{NodeId, Peer, PeerId, RegionDescriptor, RegionEpoch, RegionId};

use super::{schedule, ClusterSnapshot, NodeView, Operator, OperatorKind, Reason, RegionView, SchedulerConfig};

/// A parsed fixture.
#[derive(Debug)]
struct Fixture {
    snapshot: ClusterSnapshot,
    config: SchedulerConfig,
    expected: Vec<Operator>,
}

/// Parses, runs and compares one fixture. `Err` describes the parse error or mismatch.
fn check(text: &str) -> Result<(), String> {
    let fixture = parse_fixture(text)?;
    let actual = schedule(&fixture.snapshot, &fixture.config);
    if actual == fixture.expected {
        return Ok(());
    }
    let lines = |ops: &[Operator]| {
        if ops.is_empty() {
            "    (none)\n".to_string()
        } else {
            ops.iter().map(|op| format!("    {op}\n")).collect()
        }
    };
    Err(format!("expected:\n{}actual:\n{}", lines(&fixture.expected), lines(&actual)))
}

fn parse_fixture(text: &str) -> Result<Fixture, String> {
    struct NodeLine {
        view: NodeView,
        regions: Option<u64>,
        leaders: Option<u64>,
    }
    let mut nodes: Vec<NodeLine> = Vec::new();
    let mut regions = Vec::new();
    let mut in_flight = Vec::new();
    let mut expected = Vec::new();
    let mut expect_none = false;
    let mut config = SchedulerConfig::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}: {line}", i + 1);
        let (directive, rest) = line.split_once(' ').unwrap_or((line, ""));
        match directive {
            "config" => parse_config(&mut config, rest).map_err(at)?,
            "node" => {
                let (view, regions, leaders) = parse_node(rest).map_err(at)?;
                nodes.push(NodeLine { view, regions, leaders });
            }
            "region" => regions.push(parse_region(rest).map_err(at)?),
            "inflight" => in_flight.push(parse_operator(rest).map_err(at)?),
            "expect" if rest == "none" => expect_none = true,
            "expect" => expected.push(parse_operator(rest).map_err(at)?),
            other => return Err(at(format!("unknown directive `{other}`"))),
        }
    }
    if expect_none != expected.is_empty() {
        return Err("a fixture needs either `expect none` or `expect <operator>` lines".into());
    }
    config.validate().map_err(|e| format!("invalid config: {e}"))?;
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let hosted = regions.iter().filter(|r: &&RegionView| r.is_on(n.view.id)).count() as u64;
            let led = regions.iter().filter(|r| r.leader.is_some_and(|l| l.node_id == n.view.id)).count() as u64;
            NodeView { region_count: n.regions.unwrap_or(hosted), leader_count: n.leaders.unwrap_or(led), ..n.view }
        })
        .collect();
    Ok(Fixture { snapshot: ClusterSnapshot { nodes, regions, in_flight }, config, expected })
}

fn parse_config(config: &mut SchedulerConfig, rest: &str) -> Result<(), String> {
    for (key, value) in key_values(rest)? {
        let n = number(value)?;
        let usize_n = || usize::try_from(n).map_err(|e| e.to_string());
        match key {
            "replicas" => config.replicas = usize_n()?,
            "max_down_time_ms" => config.max_down_time_ms = n,
            "region_tolerance" => config.region_tolerance = n,
            "leader_tolerance" => config.leader_tolerance = n,
            "split_bytes" => config.split_bytes = n,
            "split_keys" => config.split_keys = n,
            "merge_bytes" => config.merge_bytes = n,
            "merge_keys" => config.merge_keys = n,
            "split_merge_interval_ms" => config.split_merge_interval_ms = n,
            "hot_qps" => config.hot_qps = n,
            "split_max_host_busy_pct" => config.split_max_host_busy_pct = u8::try_from(n).map_err(|e| e.to_string())?,
            "max_ops_per_node" => config.max_ops_per_node = usize_n()?,
            other => return Err(format!("unknown config field `{other}`")),
        }
    }
    Ok(())
}

fn parse_node(rest: &str) -> Result<(NodeView, Option<u64>, Option<u64>), String> {
    let mut tokens = rest.split_whitespace();
    let id = NodeId(prefixed(tokens.next().ok_or("missing node id")?, "n")?);
    let mut node = NodeView::up(id);
    let (mut regions, mut leaders) = (None, None);
    for token in tokens {
        if token == "draining" {
            node.draining = true;
            continue;
        }
        let (key, value) = token.split_once('=').ok_or_else(|| format!("expected key=value, got `{token}`"))?;
        let n = number(value)?;
        match key {
            "down" => (node.up, node.down_for_ms) = (false, n),
            "regions" => regions = Some(n),
            "leaders" => leaders = Some(n),
            "used" => node.used_bytes = n,
            "capacity" => node.capacity_bytes = n,
            "cpu" => node.host_cpu_busy_pct = Some(u8::try_from(n).map_err(|e| e.to_string())?),
            other => return Err(format!("unknown node field `{other}`")),
        }
    }
    Ok((node, regions, leaders))
}

fn parse_region(rest: &str) -> Result<RegionView, String> {
    let mut tokens = rest.splitn(2, ' ');
    let id = RegionId(prefixed(tokens.next().ok_or("missing region id")?, "r")?);
    let mut range = None;
    let mut epoch = None;
    let mut voters = None;
    let mut learners = Vec::new();
    let mut leader = Some(None);
    let mut region = RegionView {
        descriptor: RegionDescriptor {
            id,
            start_key: Vec::new(),
            end_key: Vec::new(),
            epoch: RegionEpoch::default(),
            peers: Vec::new(),
        },
        learners: Vec::new(),
        leader: None,
        approximate_size: 0,
        approximate_keys: 0,
        write_qps: 0,
        read_qps: 0,
        since_split_ms: 0,
    };
    for (key, value) in key_values(tokens.next().unwrap_or(""))? {
        match key {
            "range" => {
                let (start, end) = value.split_once("..").ok_or("range is <start>..<end>")?;
                range = Some((start.as_bytes().to_vec(), end.as_bytes().to_vec()));
            }
            "epoch" => epoch = Some(parse_epoch(value)?),
            "voters" => voters = Some(value.split(',').map(parse_peer).collect::<Result<Vec<_>, _>>()?),
            "learners" => learners = value.split(',').map(parse_peer).collect::<Result<Vec<_>, _>>()?,
            "leader" if value == "none" => leader = None,
            "leader" => leader = Some(Some(parse_peer(value)?)),
            "size" => region.approximate_size = number(value)?,
            "keys" => region.approximate_keys = number(value)?,
            "wqps" => region.write_qps = number(value)?,
            "rqps" => region.read_qps = number(value)?,
            "since_split" => region.since_split_ms = number(value)?,
            other => return Err(format!("unknown region field `{other}`")),
        }
    }
    let (start_key, end_key) = range.ok_or("missing range=")?;
    let peers = voters.ok_or("missing voters=")?;
    region.leader = match leader {
        Some(Some(leader)) => Some(leader),
        Some(None) => peers.first().copied(),
        None => None,
    };
    region.descriptor = RegionDescriptor { id, start_key, end_key, epoch: epoch.ok_or("missing epoch=")?, peers };
    region.learners = learners;
    Ok(region)
}

/// Parses an operator in its `Display` form and checks that it prints back the same.
fn parse_operator(line: &str) -> Result<Operator, String> {
    let (kind_part, reason_part) = line.split_once(" because ").ok_or("operator needs ` because <reason>`")?;
    let mut kind = kind_part.split_whitespace();
    let mut next = |what: &str| kind.next().ok_or_else(|| format!("missing {what}"));
    let region_id = RegionId(prefixed(next("region")?, "r")?);
    let epoch = parse_epoch(next("epoch")?)?;
    let kind = match next("kind")? {
        "add-learner" => OperatorKind::AddLearner { node: NodeId(prefixed(next("node")?, "n")?) },
        "promote-learner" => OperatorKind::PromoteLearner { peer: parse_peer(next("peer")?)? },
        "remove-peer" => OperatorKind::RemovePeer { peer: parse_peer(next("peer")?)? },
        "transfer-leader" => OperatorKind::TransferLeader { to: parse_peer(next("peer")?)? },
        "split" => match next("key") {
            Err(_) => OperatorKind::Split { key: None },
            Ok(key) => OperatorKind::Split { key: Some(hex(key.strip_prefix("key=").ok_or("split key=<hex>")?)?) },
        },
        "merge" => {
            let source = RegionId(prefixed(next("source")?, "r")?);
            if next("into")? != "into" {
                return Err("merge <source> into <target>".into());
            }
            OperatorKind::Merge { source, target: RegionId(prefixed(next("target")?, "r")?) }
        }
        other => return Err(format!("unknown operator kind `{other}`")),
    };
    let mut words = reason_part.split_whitespace();
    let name = words.next().unwrap_or("");
    let mut node = || -> Result<NodeId, String> { Ok(NodeId(prefixed(words.next().ok_or("missing node")?, "n")?)) };
    let reason = match name {
        "down-voter" => Reason::DownVoter { node: node()? },
        "draining-voter" => Reason::DrainingVoter { node: node()? },
        "missing-replica" => Reason::MissingReplica,
        "excess-replica" => Reason::ExcessReplica { node: node()? },
        "bad-learner" => Reason::BadLearner { node: node()? },
        "complete-move" => Reason::CompleteMove,
        "split-size" => Reason::SplitSize,
        "split-keys" => Reason::SplitKeys,
        "split-hot" => Reason::SplitHot,
        "merge-small" => Reason::MergeSmall,
        "balance-region" => Reason::BalanceRegion { from: node()?, to: node()? },
        "balance-leader" => Reason::BalanceLeader { from: node()?, to: node()? },
        other => return Err(format!("unknown reason `{other}`")),
    };
    let op = Operator { region_id, epoch, kind, reason };
    if op.to_string() != line {
        return Err(format!("operator does not print back the same: `{op}`"));
    }
    Ok(op)
}

fn key_values(rest: &str) -> Result<Vec<(&str, &str)>, String> {
    rest.split_whitespace().map(|t| t.split_once('=').ok_or_else(|| format!("expected key=value, got `{t}`"))).collect()
}

fn parse_peer(s: &str) -> Result<Peer, String> {
    let (peer, node) = s.split_once('@').ok_or_else(|| format!("peer is p<id>@n<id>, got `{s}`"))?;
    Ok(Peer { id: PeerId(prefixed(peer, "p")?), node_id: NodeId(prefixed(node, "n")?) })
}

fn parse_epoch(s: &str) -> Result<RegionEpoch, String> {
    let (conf_ver, version) = s.split_once('/').ok_or_else(|| format!("epoch is <conf_ver>/<version>, got `{s}`"))?;
    Ok(RegionEpoch { conf_ver: number(conf_ver)?, version: number(version)? })
}

fn prefixed(s: &str, prefix: &str) -> Result<u64, String> {
    number(s.strip_prefix(prefix).ok_or_else(|| format!("expected `{prefix}<id>`, got `{s}`"))?)
}

fn number(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 7] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("ms", 1),
        ("min", 60_000),
        ("s", 1_000),
        ("h", 3_600_000),
    ];
    let s = s.replace('_', "");
    let (digits, unit) =
        UNITS.iter().find_map(|(suffix, unit)| Some((s.strip_suffix(suffix)?, *unit))).unwrap_or((&s, 1));
    let n: u64 = digits.parse().map_err(|e| format!("bad number `{s}`: {e}"))?;
    n.checked_mul(unit).ok_or_else(|| format!("number `{s}` overflows"))
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex `{s}`"));
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

fn fixture_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/scheduler/fixtures"))
}

fn fixture_files() -> BTreeMap<String, String> {
    std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).expect("fixture readable"))
        })
        .collect()
}

#[test]
fn every_fixture_matches() {
    let files = fixture_files();
    assert!(files.len() >= 12, "expected at least 12 fixtures, found {}", files.len());
    let failures: Vec<String> =
        files.iter().filter_map(|(name, text)| check(text).err().map(|e| format!("fixture {name}:\n{e}"))).collect();
    assert!(failures.is_empty(), "{} of {} fixtures failed:\n\n{}", failures.len(), files.len(), failures.join("\n"));
}

/// The checker can fail: every fixture fails when it also expects an operator the scheduler
/// does not plan, and every fixture that expects operators fails without its last one.
#[test]
fn checker_detects_wrong_expectations() {
    for (name, text) in fixture_files() {
        let expects: Vec<&str> = text.lines().filter(|l| l.starts_with("expect ")).collect();
        let others: String = text.lines().filter(|l| !l.starts_with("expect ")).map(|l| format!("{l}\n")).collect();
        let mut wrong = vec![format!(
            "{others}{}expect r999 1/1 split because split-size\n",
            expects.iter().filter(|l| **l != "expect none").map(|l| format!("{l}\n")).collect::<String>()
        )];
        if let [kept @ .., _last] = expects.as_slice() {
            if expects != ["expect none"] {
                let kept = if kept.is_empty() { "expect none\n".to_string() } else { kept.join("\n") + "\n" };
                wrong.push(format!("{others}{kept}"));
            }
        }
        for text in wrong {
            assert!(parse_fixture(&text).is_ok(), "fixture {name}: mutated text must still parse");
            assert!(check(&text).is_err(), "fixture {name} passed with a wrong expectation:\n{text}");
        }
    }
}

#[test]
fn fixture_parse_errors_name_the_line() {
    let err = check("node n1\nregion r1 range=.. epoch=1/1 voters=p1@x1\nexpect none\n").unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    let err = check("node n1\n").unwrap_err();
    assert!(err.contains("expect"), "{err}");
    assert_eq!(number("96MiB"), Ok(96 << 20));
    assert_eq!(number("30min"), Ok(1_800_000));
    assert_eq!(number("1_500ms"), Ok(1_500));
}

#[test]
fn operators_round_trip_through_the_fixture_form() {
    for line in [
        "r1 1/1 add-learner n4 because down-voter n3",
        "r2 3/4 promote-learner p9@n4 because draining-voter n3",
        "r3 1/2 remove-peer p3@n3 because excess-replica n3",
        "r4 1/1 transfer-leader p2@n2 because balance-leader n1 n2",
        "r5 1/1 split because split-hot",
        "r5 1/1 split key=6d00 because split-size",
        "r6 1/1 merge r6 into r5 because merge-small",
        "r7 1/1 add-learner n5 because balance-region n1 n5",
        "r8 1/1 remove-peer p8@n2 because bad-learner n2",
        "r9 1/1 promote-learner p9@n4 because complete-move",
    ] {
        assert_eq!(parse_operator(line).map(|op| op.to_string()), Ok(line.to_string()));
    }
}

#[test]
fn fixture_results_do_not_depend_on_input_order() {
    for (name, text) in fixture_files() {
        let fixture = parse_fixture(&text).unwrap();
        let mut reversed = fixture.snapshot.clone();
        reversed.nodes.reverse();
        reversed.regions.reverse();
        for region in &mut reversed.regions {
            region.descriptor.peers.reverse();
            region.learners.reverse();
        }
        assert_eq!(
            schedule(&reversed, &fixture.config),
            schedule(&fixture.snapshot, &fixture.config),
            "fixture {name}: the order of nodes, regions or peers changed the result"
        );
    }
}
