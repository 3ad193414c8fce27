// Latency and throughput of the JS SDK against a dev cluster, next to the Rust client in
// the same run:
// - sequential round trips (p50/p99 of get and put, 100-byte values) from Node.js over
//   WebSocket, from headless Chromium over WebTransport and over WebSocket, and from the
//   native Rust client over QUIC (the `rust_latency` example of bindings/python);
// - throughput from Node.js with 64 requests in flight (puts, then gets);
// - the size of the wasm, raw and gzipped.
//
//   node bench/bench.mjs [--tessera target/release/tessera] [--rust-latency target/release/examples/rust_latency]
//                        [--ops 2000] [--seconds 5]
//
// It starts its own `tessera dev --web` in a temporary directory. Numbers are only valid on
// an otherwise idle machine: it refuses to start while cargo or rustc runs.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { Client } from '../js/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const { values: args } = parseArgs({
  options: {
    tessera: { type: 'string', default: join(root, 'target/release/tessera') },
    'rust-latency': { type: 'string', default: join(root, 'target/release/examples/rust_latency') },
    ops: { type: 'string', default: '2000' },
    seconds: { type: 'string', default: '5' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
const OPS = Number(args.ops);
const SECONDS = Number(args.seconds);

const busy = readdirSync('/proc')
  .filter((p) => /^\d+$/.test(p))
  .map((p) => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  })
  .filter((name) => ['cargo', 'rustc', 'cc1', 'ld', 'maturin'].includes(name));
if (busy.length) {
  console.error(`refusing to measure while ${busy.join(', ')} run`);
  process.exit(2);
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];
const summary = (us) => {
  const s = [...us].sort((a, b) => a - b);
  return { p50: pct(s, 0.5), p99: pct(s, 0.99) };
};
const value = 'v'.repeat(100);

async function sequential(db, prefix) {
  for (let i = 0; i < 100; i++) await db.put(`${prefix}/${i}`, value);
  for (let i = 0; i < 200; i++) await db.get(`${prefix}/${i % 100}`); // warm-up
  const gets = [];
  for (let i = 0; i < OPS; i++) {
    const t = performance.now();
    await db.get(`${prefix}/${i % 100}`);
    gets.push((performance.now() - t) * 1000);
  }
  const puts = [];
  for (let i = 0; i < OPS; i++) {
    const t = performance.now();
    await db.put(`${prefix}/${i % 100}`, value);
    puts.push((performance.now() - t) * 1000);
  }
  return { get: summary(gets), put: summary(puts) };
}

async function throughput(db, op, inFlight) {
  let done = 0;
  const deadline = performance.now() + SECONDS * 1000;
  const worker = async (w) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const key = `tp/${w}/${i % 50}`;
      if (op === 'put') await db.put(key, value);
      else await db.get(key);
      done++;
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: inFlight }, (_, w) => worker(w)));
  return done / ((performance.now() - start) / 1000);
}

const dir = mkdtempSync(join(tmpdir(), 'tessera-bench-js-'));
const dev = spawn(args.tessera, ['dev', '--data', dir, '--web'], { stdio: ['ignore', 'pipe', 'inherit'] });
const { url, pd } = await new Promise((resolve, reject) => {
  const lines = createInterface({ input: dev.stdout });
  let url, pd;
  lines.on('line', (line) => {
    url ??= line.match(/^web page: (\S+)/)?.[1];
    pd ??= line.match(/^PD\s+(\S+)/)?.[1];
    if (line.startsWith('press Ctrl-C')) resolve({ url, pd });
  });
  dev.on('exit', (code) => reject(new Error(`tessera dev exited with ${code}`)));
});
const config = JSON.parse(readFileSync(join(dir, 'web.json'), 'utf8'));
const results = { ops: OPS, seconds: SECONDS };
try {
  const db = await Client.connect(config);
  results.node_websocket = await sequential(db, 'bench/node');
  results.node_64_in_flight_puts_per_s = await throughput(db, 'put', 64);
  results.node_64_in_flight_gets_per_s = await throughput(db, 'get', 64);
  db.close();

  if (existsSync(args.chromium)) {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: args.chromium, args: ['--no-sandbox', '--disable-gpu'] });
    const page = await browser.newPage();
    await page.goto(url + 'web.json');
    for (const transport of ['webtransport', 'websocket']) {
      results[`chromium_${transport}`] = await page.evaluate(
        async ({ transport, OPS }) => {
          const { Client } = await import('/js/index.js');
          const db = await Client.connect({ ...(await (await fetch('/web.json')).json()), transport });
          const value = 'v'.repeat(100);
          const pct = (s, p) => s[Math.min(s.length - 1, Math.round((s.length - 1) * p))];
          const summary = (us) => {
            const s = [...us].sort((a, b) => a - b);
            return { p50: pct(s, 0.5), p99: pct(s, 0.99) };
          };
          for (let i = 0; i < 100; i++) await db.put(`bench/browser/${i}`, value);
          for (let i = 0; i < 200; i++) await db.get(`bench/browser/${i % 100}`);
          const gets = [];
          for (let i = 0; i < OPS; i++) {
            const t = performance.now();
            await db.get(`bench/browser/${i % 100}`);
            gets.push((performance.now() - t) * 1000);
          }
          const puts = [];
          for (let i = 0; i < OPS; i++) {
            const t = performance.now();
            await db.put(`bench/browser/${i % 100}`, value);
            puts.push((performance.now() - t) * 1000);
          }
          db.close();
          return { transport: db.transport, get: summary(gets), put: summary(puts) };
        },
        { transport, OPS },
      );
    }
    await browser.close();
  }

  if (existsSync(args['rust-latency'])) {
    const out = execFileSync(args['rust-latency'], [pd, join(dir, 'certs'), String(OPS), String(OPS)], { encoding: 'utf8' });
    const r = JSON.parse(out.trim().split('\n').at(-1));
    results.rust_quic = { get: { p50: r.get_p50_us, p99: r.get_p99_us }, put: { p50: r.put_p50_us, p99: r.put_p99_us } };
  }

  const wasm = readFileSync(join(here, '..', 'pkg', 'tessera_bg.wasm'));
  results.wasm_bytes = wasm.length;
  results.wasm_gzip_bytes = gzipSync(wasm, { level: 9 }).length;
} finally {
  dev.kill('SIGTERM');
  await new Promise((r) => dev.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}

const row = (name, r) =>
  r ? `| ${name} | ${r.get.p50.toFixed(0)} | ${r.get.p99.toFixed(0)} | ${r.put.p50.toFixed(0)} | ${r.put.p99.toFixed(0)} |` : `| ${name} | – | – | – | – |`;
console.log(JSON.stringify(results));
console.log('\n| client | get p50 µs | get p99 µs | put p50 µs | put p99 µs |\n|---|---|---|---|---|');
console.log(row('Rust (QUIC, mTLS)', results.rust_quic));
console.log(row('Node.js (WebSocket)', results.node_websocket));
console.log(row('Chromium (WebTransport)', results.chromium_webtransport));
console.log(row('Chromium (WebSocket)', results.chromium_websocket));
console.log(`\nNode.js, 64 in flight: ${results.node_64_in_flight_puts_per_s.toFixed(0)} puts/s, ${results.node_64_in_flight_gets_per_s.toFixed(0)} gets/s`);
console.log(`wasm: ${(results.wasm_bytes / 1024).toFixed(1)} KiB, ${(results.wasm_gzip_bytes / 1024).toFixed(1)} KiB gzipped`);
