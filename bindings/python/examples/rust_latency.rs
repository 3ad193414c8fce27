//! The Rust client's sequential round-trip latency, for `bench.py` to print next to the
//! Python client's (same cluster, same run, same build profile).
//!
//! `rust_latency PD_ADDR CERT_DIR GETS PUTS` prints one line of JSON: p50 and p99 of
//! sequential gets and puts, in microseconds.

use std::path::Path;
use std::time::Instant;

use tessera::{Client, ClientConfig, TlsFiles};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut micros: Vec<f64>) -> (f64, f64) {
    micros.sort_by(f64::total_cmp);
    (percentile(&micros, 0.50), percentile(&micros, 0.99))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, pd, certs, gets, puts] = args.as_slice() else {
        return Err("usage: rust_latency PD_ADDR CERT_DIR GETS PUTS".into());
    };
    let (gets, puts): (usize, usize) = (gets.parse()?, puts.parse()?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let tls = TlsFiles::client(Path::new(certs), "dev");
        let client = Client::connect(ClientConfig::new(vec![pd.clone()], Some(tls))).await?;
        let value = vec![b'v'; 100];
        for i in 0..100 {
            client.put(format!("bench/rust/{i:04}").as_bytes(), &value).await?;
        }
        let mut get_us = Vec::with_capacity(gets);
        for i in 0..gets {
            let key = format!("bench/rust/{:04}", i % 100);
            let t = Instant::now();
            client.get(key.as_bytes()).await?;
            get_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut put_us = Vec::with_capacity(puts);
        for i in 0..puts {
            let key = format!("bench/rust/{:04}", i % 100);
            let t = Instant::now();
            client.put(key.as_bytes(), &value).await?;
            put_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (g50, g99) = summary(get_us);
        let (p50, p99) = summary(put_us);
        println!(
            "{{\"get_p50_us\": {g50:.1}, \"get_p99_us\": {g99:.1}, \"put_p50_us\": {p50:.1}, \"put_p99_us\": {p99:.1}}}"
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
