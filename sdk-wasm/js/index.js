// The public JavaScript API of Tessera: a typed wrapper over the wasm client.
//
// Everything that decides (routing, retries, exactly-once sessions, deadlines) is the Rust
// client inside the wasm; this file converts keys and values, maps errors to classes and
// pages scans lazily. See index.d.ts for the documented API.

import init, { WasmClient } from '../pkg/tessera.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Base class of every error the client raises. `code` is stable across SDKs. */
export class TesseraError extends Error {
  constructor(message, code, details = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    Object.assign(this, details);
  }
}
/** A write may or may not have been applied: read the key to learn its outcome. */
export class UndeterminedError extends TesseraError {}
/** The deadline passed first; a write was not applied. */
export class DeadlineExceededError extends TesseraError {}
/** No replica or PD answered before the deadline. */
export class UnavailableError extends TesseraError {}
/** The request is malformed. */
export class InvalidArgumentError extends TesseraError {}
/** A key exceeds the size limit. */
export class KeyTooLargeError extends InvalidArgumentError {}
/** A value exceeds the size limit. */
export class ValueTooLargeError extends InvalidArgumentError {}
/** The token is missing, invalid, expired or revoked, or does not allow this request. */
export class AuthError extends TesseraError {}
/** A peer broke the protocol, or speaks another version. */
export class ProtocolError extends TesseraError {}
/** The client's options are invalid. */
export class ConfigError extends TesseraError {}
/** Some parts of a multi-region batch were applied: see `applied` and `undeterminedPositions`. */
export class PartialBatchError extends TesseraError {}
/** The call's AbortSignal fired. A write aborted in flight may still be applied. */
export class AbortedError extends TesseraError {}
/** The client was closed. */
export class ClosedError extends TesseraError {}

const CLASSES = {
  Undetermined: UndeterminedError,
  DeadlineExceeded: DeadlineExceededError,
  Unavailable: UnavailableError,
  StorageUnavailable: UnavailableError,
  InvalidArgument: InvalidArgumentError,
  KeyTooLarge: KeyTooLargeError,
  ValueTooLarge: ValueTooLargeError,
  Unauthenticated: AuthError,
  PermissionDenied: AuthError,
  UnsupportedVersion: ProtocolError,
  Protocol: ProtocolError,
  Config: ConfigError,
  Tls: ConfigError,
  PartialBatch: PartialBatchError,
};

function translate(e) {
  if (e instanceof TesseraError) return e;
  if (e && typeof e === 'object' && typeof e.code === 'string') {
    const Class = CLASSES[e.code] ?? TesseraError;
    const details = { undetermined: Boolean(e.undetermined) };
    if (e.code === 'PartialBatch') {
      Object.assign(details, { applied: e.applied, undeterminedPositions: e.undeterminedPositions, total: e.total });
    }
    return new Class(e.message, e.code, details);
  }
  return e;
}

/** Bytes of a key or value: a Uint8Array as is, a string as UTF-8. */
export function toBytes(v, what = 'value') {
  if (v instanceof Uint8Array) return v;
  if (typeof v === 'string') return encoder.encode(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  throw new InvalidArgumentError(`${what} must be a Uint8Array or a string`, 'InvalidArgument');
}

/** UTF-8 text of bytes (`null` stays `null`). */
export function getString(bytes) {
  return bytes == null ? null : decoder.decode(bytes);
}

let loaded;
const isNode = typeof process !== 'undefined' && process.versions != null && process.versions.node != null;

async function load() {
  loaded ??= (async () => {
    if (isNode) {
      const { readFile } = await import('node:fs/promises');
      const bytes = await readFile(new URL('../pkg/tessera_bg.wasm', import.meta.url));
      if (typeof globalThis.WebSocket === 'undefined') {
        // Node.js 20 has no global WebSocket.
        const ws = await import('ws');
        globalThis.WebSocket = ws.WebSocket;
      }
      await init({ module_or_path: bytes });
    } else {
      await init({ module_or_path: new URL('../pkg/tessera_bg.wasm', import.meta.url) });
    }
  })();
  return loaded;
}

function timeoutOf(opts) {
  return opts?.timeoutMs ?? undefined;
}

/** Runs `op`, honouring `opts.signal`, and translates its errors. */
async function call(client, opts, op) {
  if (client._closed) throw new ClosedError('the client is closed', 'Closed');
  const signal = opts?.signal;
  if (signal?.aborted) throw new AbortedError('aborted before it was sent', 'Aborted');
  const work = op().catch((e) => {
    throw translate(e);
  });
  if (!signal) return work;
  let onAbort;
  const aborted = new Promise((_, reject) => {
    onAbort = () => reject(new AbortedError('aborted; a write may still be applied', 'Aborted', { undetermined: true }));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
    work.catch(() => {});
  }
}

/** A connection to a Tessera cluster over WebSocket, authenticated by a scoped token. */
export class Client {
  constructor(inner) {
    this._inner = inner;
    this._closed = false;
  }

  /**
   * Connects. `options` is what `tessera dev` writes to DATA/web.json (`{ pd: ["ws://…"],
   * webtransport: ["https://…"], certHashes: [hex], token }`), optionally with `transport`
   * (`"websocket"` or `"webtransport"`; default: WebTransport where the runtime has it),
   * `requestTimeoutMs` and `attemptTimeoutMs`.
   */
  static async connect(options) {
    await load();
    try {
      return new Client(await WasmClient.connect(options));
    } catch (e) {
      throw translate(e);
    }
  }

  /** How this client reaches the cluster: `"webtransport"` or `"websocket"`. */
  get transport() {
    return this._inner.transport;
  }

  /** The value of `key`, or `null` when absent. */
  get(key, opts) {
    return call(this, opts, () => this._inner.get(toBytes(key, 'key'), timeoutOf(opts)));
  }

  /** The value of `key` as UTF-8 text, or `null`. */
  async getString(key, opts) {
    return getString(await this.get(key, opts));
  }

  /** The value of `key` from any replica: may miss the latest writes. */
  getStale(key, opts) {
    return call(this, opts, () => this._inner.getStale(toBytes(key, 'key'), timeoutOf(opts)));
  }

  /** Sets `key` to `value`. */
  put(key, value, opts) {
    return call(this, opts, () => this._inner.put(toBytes(key, 'key'), toBytes(value), timeoutOf(opts)));
  }

  /** Deletes `key`; resolves to whether it existed. */
  delete(key, opts) {
    return call(this, opts, () => this._inner.delete(toBytes(key, 'key'), timeoutOf(opts)));
  }

  /** Appends `value` to `key`'s value (an absent key acts as a put); resolves to the new length. */
  append(key, value, opts) {
    return call(this, opts, () => this._inner.append(toBytes(key, 'key'), toBytes(value), timeoutOf(opts)));
  }

  /**
   * Sets `key` to `value` if its current value is `expected` (`null`: absent); a `null`
   * value deletes. Resolves to `{ succeeded, previous }`.
   */
  compareAndSwap(key, expected, value, opts) {
    return call(this, opts, () =>
      this._inner.compareAndSwap(
        toBytes(key, 'key'),
        expected == null ? undefined : toBytes(expected, 'expected'),
        value == null ? undefined : toBytes(value),
        timeoutOf(opts),
      ),
    );
  }

  /** The values of `keys`, in order (`null` where absent). */
  batchGet(keys, opts) {
    return call(this, opts, () => this._inner.batchGet(keys.map((k) => toBytes(k, 'key')), timeoutOf(opts)));
  }

  /** Writes `[key, value]` pairs (atomic per region; a PartialBatchError says which parts applied). */
  batchPut(pairs, opts) {
    const keys = pairs.map(([k]) => toBytes(k, 'key'));
    const values = pairs.map(([, v]) => toBytes(v));
    return call(this, opts, () => this._inner.batchPut(keys, values, timeoutOf(opts)));
  }

  /**
   * Pairs `[key, value]` of `[start, end)` (`end` empty or omitted: to the end) in key order
   * (`reverse`: descending), fetched page by page as the iteration proceeds.
   * Options: `limit`, `reverse`, `pageSize`, `stale`, `timeoutMs` (per page), `signal`.
   */
  async *scan(start = '', end = '', opts = {}) {
    if (this._closed) throw new ClosedError('the client is closed', 'Closed');
    let cursor;
    try {
      cursor = this._inner.scanCursor(
        toBytes(start ?? '', 'start'),
        toBytes(end ?? '', 'end'),
        opts.limit,
        Boolean(opts.reverse),
        opts.pageSize,
        Boolean(opts.stale),
      );
    } catch (e) {
      throw translate(e);
    }
    while (cursor) {
      const current = cursor;
      const page = await call(this, opts, () => this._inner.scanPage(current, timeoutOf(opts)));
      current.free();
      cursor = page.next;
      for (const pair of page.pairs) yield pair;
    }
  }

  /** Nodes and regions (with leaders) as PD knows them. */
  clusterStatus(opts) {
    return call(this, opts, () => this._inner.clusterStatus());
  }

  /** Closes every socket; later calls fail with ClosedError. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._inner.close();
  }
}
