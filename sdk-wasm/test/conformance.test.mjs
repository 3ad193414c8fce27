// Conformance of the JS SDK with the Rust client's suite, from Node.js over WebSocket
// against a real cluster (PD and three node processes).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  Client,
  getString,
  TesseraError,
  KeyTooLargeError,
  ValueTooLargeError,
  InvalidArgumentError,
  AuthError,
  UndeterminedError,
  ClosedError,
  AbortedError,
} from '../js/index.js';
import { TestCluster, eventually } from './cluster.mjs';

const MAX_KEY = 8 * 1024;
const MAX_VALUE = 1024 * 1024;

let cluster;
let db;

/** A key in each of the four initial regions (split on the first byte). */
const regionKeys = [0x10, 0x50, 0x90, 0xd0].map((b) => (suffix) => new Uint8Array([b, ...new TextEncoder().encode(suffix)]));

before(async () => {
  cluster = await TestCluster.start({ nodes: 3, regions: 4 });
  db = await Client.connect(cluster.options({ requestTimeoutMs: 20_000 }));
  // Every region has a leader before the tests run.
  await eventually(async () => {
    const { regions } = await db.clusterStatus();
    return regions.length === 4 && regions.every((r) => r.leader !== null);
  }, 60_000, 'every region to have a leader');
});

after(async () => {
  db?.close();
  await cluster?.stop();
});

test('every operation on keys in all regions', async () => {
  for (const [i, key] of regionKeys.entries()) {
    const k = key('ops');
    assert.equal(await db.get(k), null);
    await db.put(k, `v${i}`);
    assert.equal(getString(await db.get(k)), `v${i}`);
    assert.equal(await db.append(k, '+'), 3);
    const failed = await db.compareAndSwap(k, 'wrong', 'x');
    assert.deepEqual({ ok: failed.succeeded, prev: getString(failed.previous) }, { ok: false, prev: `v${i}+` });
    const swapped = await db.compareAndSwap(k, `v${i}+`, 'swapped');
    assert.equal(swapped.succeeded, true);
    const absent = await db.compareAndSwap(key('absent'), null, 'created');
    assert.equal(absent.succeeded, true);
    assert.equal(await db.getString(key('absent')), 'created');
    const stale = await db.getStale(k);
    assert.ok(stale === null || ['swapped', `v${i}`, `v${i}+`].includes(getString(stale)), 'a stale read sees some committed value');
    assert.equal(await db.delete(k), true);
    assert.equal(await db.delete(k), false);
    assert.equal(await db.get(k), null);
  }
  // Batches spanning every region.
  const pairs = regionKeys.flatMap((key) => [0, 1, 2].map((j) => [key(`batch${j}`), `b${j}`]));
  await db.batchPut(pairs);
  const values = await db.batchGet([...pairs.map(([k]) => k), regionKeys[0]('missing')]);
  assert.deepEqual(values.map(getString), [...pairs.map(([, v]) => v), null]);
});

test('scans across region boundaries, forward and reverse, paged lazily', async () => {
  const keys = regionKeys.flatMap((key) => [0, 1, 2, 3, 4].map((j) => key(`scan/${j}`)));
  await db.batchPut(keys.map((k, i) => [k, String(i)]));
  const hex = (b) => Buffer.from(b).toString('hex');
  const expected = keys.map(hex).sort();
  const forward = [];
  for await (const [k] of db.scan(new Uint8Array([0]), new Uint8Array([0xff]), { pageSize: 3 })) {
    if (Buffer.from(k).includes(Buffer.from('scan/'))) forward.push(hex(k));
  }
  assert.deepEqual(forward, expected);
  const backward = [];
  for await (const [k] of db.scan(new Uint8Array([0]), new Uint8Array([0xff]), { pageSize: 2, reverse: true })) {
    if (Buffer.from(k).includes(Buffer.from('scan/'))) backward.push(hex(k));
  }
  assert.deepEqual(backward, [...expected].reverse());
  // A limit stops the scan; an iteration abandoned early fetches no more pages.
  const [from, to] = [regionKeys[1]('scan/2'), regionKeys[2]('scan/3')];
  const all = [];
  for await (const [k] of db.scan(from, to, { pageSize: 100 })) all.push(hex(k));
  assert.ok(all.length > 7 && all[0].startsWith('50') && all.at(-1).startsWith('90'), 'the range spans two regions');
  const limited = [];
  for await (const [k] of db.scan(from, to, { limit: 7, pageSize: 2 })) limited.push(hex(k));
  assert.deepEqual(limited, all.slice(0, 7));
  await assert.rejects(async () => {
    for await (const _ of db.scan('b', 'a')) void _;
  }, InvalidArgumentError);
});

test('keys and values at their limits pass; one byte more is rejected with its code', async () => {
  const key = new Uint8Array(MAX_KEY).fill(0x41);
  await db.put(key, 'at the key limit');
  assert.equal(await db.getString(key), 'at the key limit');
  const value = new Uint8Array(MAX_VALUE).fill(7);
  await db.put('big', value);
  assert.equal((await db.get('big')).length, MAX_VALUE);

  const tooLongKey = new Uint8Array(MAX_KEY + 1).fill(0x41);
  await assert.rejects(db.put(tooLongKey, 'x'), (e) => e instanceof KeyTooLargeError && e.code === 'KeyTooLarge');
  await assert.rejects(db.get(tooLongKey), (e) => e instanceof KeyTooLargeError && e.code === 'KeyTooLarge');
  await assert.rejects(db.put('k', new Uint8Array(MAX_VALUE + 1)), (e) => e instanceof ValueTooLargeError && e.code === 'ValueTooLarge');
  await assert.rejects(db.put('', 'v'), (e) => e instanceof InvalidArgumentError);
  assert.equal((await db.get('big')).length, MAX_VALUE, 'a rejected write changes nothing');
  await assert.rejects(db.put(42, 'v'), InvalidArgumentError);
});

test('a follower cached as leader answers NotLeader, which corrects the cache', async () => {
  const key = regionKeys[1]('notleader');
  await db.put(key, 'before');
  const follower = await db._inner.debugCacheFollowerAsLeader(key);
  assert.equal(db._inner.debugCachedLeaderNode(key), follower, 'the cache now points at a follower');
  await db.put(key, 'after');
  assert.equal(await db.getString(key), 'after');
  const { regions } = await db.clusterStatus();
  const region = regions.find((r) => r.start[0] <= key[0] && (r.end.length === 0 || r.end[0] > key[0]));
  assert.notEqual(db._inner.debugCachedLeaderNode(key), follower, 'the redirect moved the cache off the follower');
  assert.equal(db._inner.debugCachedLeaderNode(key), region.leader);
});

test('a split makes cached epochs stale; EpochNotMatch corrects the cache', async () => {
  const key = regionKeys[0];
  await db.put(key('split/a'), 'a');
  await db.put(key('split/z'), 'z');
  // The client has the region cached; split it under the client's feet.
  cluster.admin('admin', 'split', new TextDecoder().decode(key('split/m')));
  await db.put(key('split/z'), 'z2');
  assert.equal(await db.getString(key('split/a')), 'a');
  assert.equal(await db.getString(key('split/z')), 'z2');
  const { regions } = await db.clusterStatus();
  assert.equal(regions.length, 5, 'the split happened');
});

test('a leader killed with SIGKILL mid-run: no acknowledged write lost, retried appends applied once', async () => {
  const region = regionKeys[2];
  const counter = region('failover/counter');
  const { regions } = await db.clusterStatus();
  const first = region('')[0];
  const target = regions.find((r) => (r.start.length === 0 || r.start[0] <= first) && (r.end.length === 0 || r.end[0] > first));
  const victim = target.leader;
  assert.ok(victim, 'the region has a leader');

  const acked = [];
  const lengths = [];
  let undetermined = 0;
  let stop = false;
  const writer = (async () => {
    for (let i = 0; !stop || i < 40; i++) {
      const k = region(`failover/${i}`);
      try {
        await db.put(k, String(i));
        acked.push(k);
      } catch (e) {
        assert.ok(e instanceof TesseraError, String(e));
      }
      try {
        lengths.push({ len: await db.append(counter, 'x'), undeterminedBefore: undetermined });
      } catch (e) {
        if (e instanceof UndeterminedError) undetermined++;
        else assert.ok(e instanceof TesseraError, String(e));
      }
    }
  })();
  await eventually(async () => acked.length >= 15, 30_000, 'writes before the kill');
  await cluster.kill(victim);
  const atKill = acked.length;
  await eventually(async () => acked.length >= atKill + 15, 60_000, 'writes after the failover');
  stop = true;
  await writer;
  await cluster.restart(victim);

  for (const k of acked) assert.notEqual(await db.get(k), null, `acknowledged ${Buffer.from(k).toString()} is present`);
  // Each acknowledged append returned the length after it: strictly increasing, and a gap
  // only where an earlier append's outcome was undetermined (a duplicate would be a gap).
  for (let i = 1; i < lengths.length; i++) {
    const gap = lengths[i].len - lengths[i - 1].len - 1;
    assert.ok(gap >= 0, `lengths increase: ${lengths[i - 1].len} then ${lengths[i].len}`);
    assert.ok(gap <= lengths[i].undeterminedBefore - lengths[i - 1].undeterminedBefore, `no append applied twice (gap ${gap} at ${i})`);
  }
  const final = (await db.get(counter)).length;
  assert.ok(final >= lengths.at(-1).len && final <= lengths.at(-1).len + (undetermined - lengths.at(-1).undeterminedBefore));
});

test('tokens: prefix, operations and signature are enforced', async () => {
  const scoped = await Client.connect(cluster.options({ token: cluster.createToken({ prefix: 'app/', ops: 'read,write' }) }));
  try {
    await scoped.put('app/x', '1');
    assert.equal(await scoped.getString('app/x'), '1');
    await db.put('other', 'secret');
    await assert.rejects(scoped.get('other'), (e) => e instanceof AuthError && e.code === 'PermissionDenied');
    await assert.rejects(scoped.put('other', 'x'), (e) => e instanceof AuthError && e.code === 'PermissionDenied');
    const seen = [];
    for await (const [k] of scoped.scan()) seen.push(getString(k));
    assert.deepEqual(seen, ['app/x'], 'a scan of everything is clipped to the prefix');
  } finally {
    scoped.close();
  }
  const reader = await Client.connect(cluster.options({ token: cluster.createToken({ ops: 'read' }) }));
  try {
    assert.equal(await reader.getString('app/x'), '1');
    await assert.rejects(reader.put('app/x', '2'), (e) => e instanceof AuthError && e.code === 'PermissionDenied');
  } finally {
    reader.close();
  }
  const tampered = cluster.token.slice(0, -3) + (cluster.token.endsWith('AAA') ? 'BBB' : 'AAA');
  await assert.rejects(Client.connect(cluster.options({ token: tampered })), (e) => e instanceof AuthError && e.code === 'Unauthenticated');
  await assert.rejects(Client.connect(cluster.options({ token: 'not a token' })), AuthError);
});

test('closed clients and aborted calls fail with their own classes', async () => {
  const c = await Client.connect(cluster.options());
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(c.get('k', { signal: controller.signal }), (e) => e instanceof AbortedError && e.code === 'Aborted');
  c.close();
  await assert.rejects(c.get('k'), (e) => e instanceof ClosedError && e.code === 'Closed');
  await assert.rejects(Client.connect({ pd: ['http://x:1'], token: 't' }), (e) => e.code === 'Config');
});
