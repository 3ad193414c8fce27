// A real Tessera cluster for the JS tests: PD and three nodes, each its own `tessera`
// process (so a node can be killed with SIGKILL), certificates and a token made with the
// CLI, all in a temporary directory.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The `tessera` binary: $TESSERA_BIN, else target/debug/tessera (built if missing). */
export function tesseraBin() {
  if (process.env.TESSERA_BIN) return process.env.TESSERA_BIN;
  const bin = join(root, 'target', 'debug', 'tessera');
  if (!existsSync(bin)) execFileSync('cargo', ['build', '-p', 'tessera-cli', '--bin', 'tessera'], { cwd: root, stdio: 'inherit' });
  return bin;
}

/** Starts `args` and resolves with the process once a stdout line matches `ready`. */
function startProcess(bin, args, ready, label) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'error' } });
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${label} did not start in time`)), 30_000);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    lines.on('line', (line) => {
      const m = line.match(ready);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m });
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited (${code ?? signal}) before it was ready: ${stderr}`));
    });
  });
}

export class TestCluster {
  constructor(dir, bin) {
    this.dir = dir;
    this.bin = bin;
    this.certs = join(dir, 'certs');
    this.nodes = new Map(); // id -> { child, addr }
  }

  /** PD and `nodes` nodes with `regions` initial regions. */
  static async start({ nodes = 3, regions = 4 } = {}) {
    const bin = tesseraBin();
    const c = new TestCluster(mkdtempSync(join(tmpdir(), 'tessera-js-')), bin);
    const cli = (...args) => execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    cli('certs', 'init-ca', '--dir', c.certs);
    cli('certs', 'pd', '--dir', c.certs, '--host', '127.0.0.1');
    cli('certs', 'client', '--dir', c.certs, '--name', 'admin');
    for (let id = 1; id <= nodes; id++) cli('certs', 'node', '--dir', c.certs, '--id', String(id), '--host', '127.0.0.1');
    const tls = (name) => ['--tls-ca', join(c.certs, 'ca.pem'), '--tls-cert', join(c.certs, `${name}.pem`), '--tls-key', join(c.certs, `${name}-key.pem`)];
    const pd = await startProcess(bin, ['pd', '--listen', '127.0.0.1:0', '--dir', join(c.dir, 'pd'), '--initial-regions', String(regions), ...tls('pd')], /PD listening on (\S+)/, 'PD');
    c.pd = pd.child;
    c.pdAddr = pd.match[1];
    c.tls = tls;
    for (let id = 1; id <= nodes; id++) await c.startNode(id, '127.0.0.1:0');
    c.token = c.createToken({ ops: 'read,write' });
    return c;
  }

  async startNode(id, listen) {
    const args = ['node', '--id', String(id), '--listen', listen, '--dir', join(this.dir, `node-${id}`), '--pd-endpoints', this.pdAddr, ...this.tls(`node-${id}`)];
    const { child, match } = await startProcess(this.bin, args, /listening on (\S+)/, `node ${id}`);
    this.nodes.set(id, { child, addr: match[1] });
  }

  /** A token from `tessera token create`. */
  createToken({ prefix = '', ops = 'read,write', ttl = '1h' } = {}) {
    return execFileSync(this.bin, ['token', 'create', '--dir', this.certs, '--prefix', prefix, '--ops', ops, '--ttl', ttl], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  }

  /** Runs a `tessera` client command against the cluster with the admin certificate. */
  admin(...args) {
    return execFileSync(
      this.bin,
      ['--pd', this.pdAddr, '--ca', join(this.certs, 'ca.pem'), '--cert', join(this.certs, 'client-admin.pem'), '--key', join(this.certs, 'client-admin-key.pem'), ...args],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
  }

  /** What `Client.connect` takes. */
  options(extra = {}) {
    return { pd: [`ws://${this.pdAddr}`], token: this.token, ...extra };
  }

  /** Kills node `id` with SIGKILL and waits for it to be gone. */
  async kill(id) {
    const node = this.nodes.get(id);
    const gone = new Promise((resolve) => node.child.once('exit', resolve));
    node.child.kill('SIGKILL');
    await gone;
  }

  /** Starts node `id` again on its previous address. */
  async restart(id) {
    await this.startNode(id, this.nodes.get(id).addr);
  }

  /** Stops everything (SIGKILL: the tests do not depend on a clean stop) and removes the directory. */
  async stop() {
    const all = [this.pd, ...[...this.nodes.values()].map((n) => n.child)].filter((c) => c.exitCode === null && c.signalCode === null);
    await Promise.all(
      all.map(
        (c) =>
          new Promise((resolve) => {
            c.once('exit', resolve);
            c.kill('SIGKILL');
          }),
      ),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls `check` (async, truthy when done) until it holds or `ms` pass. */
export async function eventually(check, ms = 30_000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
