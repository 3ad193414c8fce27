// Builds the npm package: the Rust client to wasm32, wasm-bindgen glue (ES module, for the
// web and for Node.js alike), then wasm-opt (binaryen from npm). Installs the wasm32 target
// and the wasm-bindgen CLI of the exact version in Cargo.lock when they are missing.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, rmSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkgDir = join(here, '..');
const root = join(pkgDir, '..');
const out = join(pkgDir, 'pkg');
const profile = process.env.TESSERA_WASM_PROFILE ?? 'wasm-release';

function run(cmd, args, opts = {}) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
}

function output(cmd, args) {
  try {
    return execFileSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

// The wasm-bindgen CLI must equal the wasm-bindgen crate version in Cargo.lock.
const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
const match = lock.match(/name = "wasm-bindgen"\nversion = "([^"]+)"/);
if (!match) throw new Error('wasm-bindgen is not in Cargo.lock');
const version = match[1];

if (!output('rustup', ['target', 'list', '--installed']).split('\n').includes('wasm32-unknown-unknown')) {
  run('rustup', ['target', 'add', 'wasm32-unknown-unknown']);
}
if (!output('wasm-bindgen', ['--version']).includes(version)) {
  console.log(`installing wasm-bindgen-cli ${version} (a few minutes, once)`);
  // Without --locked: its lockfile pins a crate version this registry may lack.
  run('cargo', ['install', 'wasm-bindgen-cli', '--version', version]);
}

run('cargo', ['build', '-p', 'tessera-sdk-wasm', '--target', 'wasm32-unknown-unknown', '--profile', profile]);
const dir = profile === 'dev' ? 'debug' : profile;
const wasm = join(root, 'target', 'wasm32-unknown-unknown', dir, 'tessera_sdk_wasm.wasm');

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
run('wasm-bindgen', ['--target', 'web', '--out-dir', out, '--out-name', 'tessera', wasm]);

const bg = join(out, 'tessera_bg.wasm');
const wasmOpt = join(pkgDir, 'node_modules', '.bin', 'wasm-opt');
if (profile !== 'dev') {
  if (!existsSync(wasmOpt)) {
    throw new Error('wasm-opt is missing: run `npm ci` (or `npm install`) in sdk-wasm/ first');
  }
  run(wasmOpt, ['-Os', '--enable-bulk-memory', '--enable-nontrapping-float-to-int', '--enable-sign-ext',
    '--enable-mutable-globals', '--enable-reference-types', bg, '-o', bg]);
}
const size = statSync(bg).size;
const gz = gzipSync(readFileSync(bg), { level: 9 }).length;
console.log(`pkg/tessera_bg.wasm: ${(size / 1024).toFixed(1)} KiB, ${(gz / 1024).toFixed(1)} KiB gzipped`);
if (gz > 250 * 1024) {
  throw new Error(`the gzipped wasm (${gz} bytes) exceeds the 250 KB budget`);
}
