// The JS SDK in headless Chromium (Debian's chromium, driven by playwright-core): the dev
// page of `tessera dev --web`, and the core of the conformance suite run inside the page,
// over WebTransport (pinned by certificate hashes, the default in a browser) and over
// WebSocket, with the dev token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

import { tesseraBin } from './cluster.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
let dev;
let dir;
let url;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
  dir = mkdtempSync(join(tmpdir(), 'tessera-web-'));
  dev = spawn(tesseraBin(), ['dev', '--data', dir, '--web'], { stdio: ['ignore', 'pipe', 'inherit'] });
  url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('tessera dev --web did not start')), 60_000);
    const lines = createInterface({ input: dev.stdout });
    let page;
    lines.on('line', (line) => {
      page ??= line.match(/^web page: (\S+)/)?.[1];
      if (line.startsWith('press Ctrl-C') && page) {
        clearTimeout(timer);
        resolve(page);
      }
    });
    dev.on('exit', (code) => reject(new Error(`tessera dev exited with ${code}`)));
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
});

after(async () => {
  await browser?.close();
  if (dev && dev.exitCode === null) {
    const gone = new Promise((resolve) => dev.once('exit', resolve));
    dev.kill('SIGTERM');
    await gone;
  }
  rmSync(dir, { recursive: true, force: true });
});

async function openPage() {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
  return { page, errors };
}

test('the dev page shows nodes and led regions, and puts and scans keys', async () => {
  const { page, errors } = await openPage();
  assert.match(await page.textContent('#conn'), /over WebTransport/, 'a browser uses WebTransport by default');
  await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr').length === 3);
  await page.waitForFunction(
    () => [...document.querySelectorAll('#regions tbody tr')].filter((r) => r.querySelector('.leader')).length === 4,
  );
  await page.fill('#key', 'browser/key');
  await page.fill('#value', 'from the form');
  await page.click('button[data-op="put"]');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'put browser/key');
  await page.fill('#start', 'browser/');
  await page.fill('#end', 'browser0');
  await page.click('#scan button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll('#rows tbody tr').length > 0);
  const rows = await page.$$eval('#rows tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(rows, [['browser/key', 'from the form']]);
  await page.click('button[data-op="get"]');
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('= from the form'));
  assert.deepEqual(errors, []);
  await page.close();
});

for (const transport of ['webtransport', 'websocket']) test(`the core of the conformance suite runs in the browser over ${transport}`, async () => {
  const { page, errors } = await openPage();
  const result = await page.evaluate(async (transport) => {
    const { Client, getString, KeyTooLargeError } = await import('./js/index.js');
    const db = await Client.connect({ ...(await (await fetch('./web.json')).json()), transport });
    const out = { transport: db.transport };
    // A fresh prefix per run: both transports write the same cluster.
    const tag = transport === 'websocket' ? 0x6b : 0x6c;
    // A key in each of the four regions (split on the first byte).
    const keys = [0x10, 0x50, 0x90, 0xd0].map((b) => new Uint8Array([b, tag]));
    for (const k of keys) await db.put(k, 'v');
    out.values = (await db.batchGet(keys)).map(getString);
    out.appended = await db.append(keys[2], '+');
    out.cas = (await db.compareAndSwap(keys[3], 'v', 'w')).succeeded;
    out.deleted = await db.delete(keys[0]);
    out.forward = [];
    for await (const [k] of db.scan(new Uint8Array([0]), new Uint8Array([0xff]), { pageSize: 1 })) {
      if (k.length === 2 && k[1] === tag) out.forward.push(k[0]);
    }
    out.reverse = [];
    for await (const [k] of db.scan(new Uint8Array([0]), new Uint8Array([0xff]), { pageSize: 1, reverse: true })) {
      if (k.length === 2 && k[1] === tag) out.reverse.push(k[0]);
    }
    try {
      await db.put(new Uint8Array(8 * 1024 + 1), 'x');
      out.tooLarge = 'accepted';
    } catch (e) {
      out.tooLarge = e instanceof KeyTooLargeError ? e.code : String(e);
    }
    db.close();
    return out;
  }, transport);
  assert.deepEqual(result, {
    transport,
    values: ['v', 'v', 'v', 'v'],
    appended: 2,
    cas: true,
    deleted: true,
    forward: [0x50, 0x90, 0xd0],
    reverse: [0xd0, 0x90, 0x50],
    tooLarge: 'KeyTooLarge',
  });
  assert.deepEqual(errors, []);
  await page.close();
});
