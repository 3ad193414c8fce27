//! A simulated linearizable store: concurrent clients against one sequential register map.
//!
//! Each operation gets an invocation time, a linearization point (where it is applied to the
//! ground-truth map) and a completion time, on one virtual clock. The resulting history is
//! linearizable by construction; tests then corrupt it.

use std::collections::HashMap;

use tessera_lincheck::{ClientId, History, Op, Output};

/// splitmix64: a tiny seedable generator, so every failure reproduces from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One recorded operation; `end` is `None` for an unknown outcome.
#[derive(Debug, Clone)]
pub struct Rec {
    pub client: ClientId,
    pub key: Vec<u8>,
    pub op: Op,
    pub invoke: u64,
    pub end: Option<(Output, u64)>,
}

/// Replays records into a [`History`].
pub fn to_history(recs: &[Rec]) -> History {
    let mut h = History::new();
    for r in recs {
        let id = h.invoke(r.client, r.key.clone(), r.op.clone(), r.invoke);
        match &r.end {
            Some((out, t)) => h.complete(id, out.clone(), *t).unwrap(),
            None => h.unknown(id).unwrap(),
        }
    }
    h
}

#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub clients: usize,
    pub keys: usize,
    pub ops: usize,
    /// Percentage of writes whose outcome is reported unknown (half of them never applied).
    pub unknown_percent: u64,
}

enum Client {
    Idle,
    Invoked { rec: usize, unknown: bool },
    Applied { rec: usize, output: Option<Output> },
}

/// Runs the simulation. Written values are unique: puts write `p<n>`, CAS writes `c<n>`,
/// appends add `+a<n>`, so a value `p<n>` can only come from the one put that wrote it.
pub fn simulate(seed: u64, cfg: SimConfig) -> Vec<Rec> {
    let mut rng = Rng::new(seed);
    let mut truth: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut clients: Vec<Client> = (0..cfg.clients).map(|_| Client::Idle).collect();
    let mut recs: Vec<Rec> = Vec::new();
    let mut now = 0u64;
    let mut serial = 0u64;
    loop {
        if recs.len() >= cfg.ops && clients.iter().all(|c| matches!(c, Client::Idle)) {
            return recs;
        }
        now += 1 + rng.below(3);
        let c = rng.below(cfg.clients as u64) as usize;
        clients[c] = match std::mem::replace(&mut clients[c], Client::Idle) {
            Client::Idle if recs.len() < cfg.ops => {
                serial += 1;
                let key = format!("key{}", rng.below(cfg.keys as u64)).into_bytes();
                let current = truth.get(&key).cloned().flatten();
                let op = random_op(&mut rng, serial, current);
                let unknown = op != Op::Get && rng.chance(cfg.unknown_percent) || op == Op::Get && rng.chance(2);
                recs.push(Rec { client: ClientId(c as u64), key, op, invoke: now, end: None });
                Client::Invoked { rec: recs.len() - 1, unknown }
            }
            Client::Idle => Client::Idle,
            Client::Invoked { rec, unknown } => {
                // The linearization point. An unknown write takes effect only half the time;
                // either way the client never learns its output.
                let mut output = None;
                if !unknown || rng.chance(50) {
                    let value = truth.entry(recs[rec].key.clone()).or_default();
                    output = Some(apply(&mut rng, value, &recs[rec].op));
                }
                Client::Applied { rec, output: output.filter(|_| !unknown) }
            }
            Client::Applied { rec, output } => {
                recs[rec].end = output.map(|o| (o, now));
                Client::Idle
            }
        };
    }
}

fn random_op(rng: &mut Rng, serial: u64, current: Option<Vec<u8>>) -> Op {
    match rng.below(10) {
        0..=3 => Op::Get,
        4..=5 => Op::put(format!("p{serial}")),
        6 => Op::Delete,
        7 => Op::append(format!("+a{serial}")),
        _ => {
            // Expect the value seen at invocation half the time, so some CAS succeed.
            let expected = if rng.chance(50) { current } else { Some(b"p0".to_vec()) };
            let new = if rng.chance(80) { Some(format!("c{serial}").into_bytes()) } else { None };
            Op::Cas { expected, new }
        }
    }
}

/// Applies `op` to the ground truth and returns what the store would answer.
fn apply(rng: &mut Rng, value: &mut Option<Vec<u8>>, op: &Op) -> Output {
    match op {
        Op::Get => Output::Get(value.clone()),
        Op::Put(v) => {
            *value = Some(v.clone());
            Output::Put
        }
        Op::Delete => {
            let existed = value.take().is_some();
            Output::Delete { existed: rng.chance(70).then_some(existed) }
        }
        Op::Append(b) => {
            let v = value.get_or_insert_with(Vec::new);
            v.extend_from_slice(b);
            Output::Append { new_len: rng.chance(70).then_some(v.len() as u64) }
        }
        Op::Cas { expected, new } => {
            let succeeded = expected == value;
            if succeeded {
                *value = new.clone();
            }
            Output::Cas { succeeded }
        }
        other => unreachable!("unsupported op {other:?}"),
    }
}

/// Changes one completed read so that no linearization exists, and returns its index: either
/// to the value of a put on the same key invoked after the read completed (when there is
/// one), or to a value never written.
pub fn corrupt_one_read(rng: &mut Rng, recs: &mut [Rec]) -> Option<usize> {
    let reads: Vec<usize> = (0..recs.len()).filter(|&i| recs[i].op == Op::Get && recs[i].end.is_some()).collect();
    if reads.is_empty() {
        return None;
    }
    let r = reads[rng.below(reads.len() as u64) as usize];
    let done = recs[r].end.as_ref().map(|(_, t)| *t).expect("completed read");
    let future_puts: Vec<Vec<u8>> = recs
        .iter()
        .filter(|w| w.key == recs[r].key && w.invoke > done)
        .filter_map(|w| match &w.op {
            Op::Put(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    let value = if !future_puts.is_empty() && rng.chance(70) {
        future_puts[rng.below(future_puts.len() as u64) as usize].clone()
    } else {
        b"never-written".to_vec()
    };
    if let Some((out, _)) = &mut recs[r].end {
        *out = Output::Get(Some(value));
    }
    Some(r)
}
