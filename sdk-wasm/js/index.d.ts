/** Keys and values: bytes, or strings (encoded as UTF-8). */
export type Bytes = Uint8Array | string;

/** What `tessera dev` writes to DATA/web.json, plus optional timeouts. */
export interface ConnectOptions {
  /** PD WebSocket URLs, `ws://host:port` (or `wss://`). */
  pd: string[];
  /** A token from `tessera token create` (or web.json's dev token). */
  token: string;
  /** PD's WebTransport URLs, `https://host:port/` (browsers). */
  webtransport?: string[];
  /** Hex SHA-256 hashes of PD's WebTransport certificates (nodes' come from PD). */
  certHashes?: string[];
  /** Default: WebTransport where the runtime has it and `webtransport` is given, else WebSocket. */
  transport?: 'websocket' | 'webtransport';
  /** Deadline of each operation, retries included (default 10000). */
  requestTimeoutMs?: number;
  /** Longest wait for one attempt before retrying elsewhere (default 3000). */
  attemptTimeoutMs?: number;
}

/** Per-call options. */
export interface CallOptions {
  /** Deadline of this call, retries included (default: the client's requestTimeoutMs). */
  timeoutMs?: number;
  /** Aborts the call with AbortedError; a write aborted in flight may still be applied. */
  signal?: AbortSignal;
}

export interface ScanOptions extends CallOptions {
  /** Most pairs in total. */
  limit?: number;
  /** Descending key order. */
  reverse?: boolean;
  /** Pairs per round trip (default 256). */
  pageSize?: number;
  /** Serve pages from any replica (may miss recent writes). */
  stale?: boolean;
}

export interface CasOutcome {
  succeeded: boolean;
  /** The value before the operation (`null`: absent). */
  previous: Uint8Array | null;
}

export interface NodeStatus {
  id: number;
  addr: string;
  up: boolean;
  regions: number;
  leaders: number;
  usedBytes: number;
}

export interface RegionStatus {
  id: number;
  start: Uint8Array;
  /** Empty: the end of the key space. */
  end: Uint8Array;
  /** Node ids of the voters. */
  nodes: number[];
  /** Node id of the leader, if known. */
  leader: number | null;
  keys: number;
  bytes: number;
}

/** Stable error codes, the same in the Rust and Python SDKs. */
export type ErrorCode =
  | 'Undetermined'
  | 'DeadlineExceeded'
  | 'InvalidArgument'
  | 'KeyTooLarge'
  | 'ValueTooLarge'
  | 'Unavailable'
  | 'Unauthenticated'
  | 'PermissionDenied'
  | 'UnsupportedVersion'
  | 'StorageUnavailable'
  | 'SessionExpired'
  | 'ServerError'
  | 'Config'
  | 'Tls'
  | 'PartialBatch'
  | 'Protocol'
  | 'Aborted'
  | 'Closed';

export class TesseraError extends Error {
  readonly code: ErrorCode;
  /** True when a write that failed may nonetheless have been applied. */
  readonly undetermined: boolean;
}
export class UndeterminedError extends TesseraError {}
export class DeadlineExceededError extends TesseraError {}
export class UnavailableError extends TesseraError {}
export class InvalidArgumentError extends TesseraError {}
export class KeyTooLargeError extends InvalidArgumentError {}
export class ValueTooLargeError extends InvalidArgumentError {}
export class AuthError extends TesseraError {}
export class ProtocolError extends TesseraError {}
export class ConfigError extends TesseraError {}
export class PartialBatchError extends TesseraError {
  readonly total: number;
  readonly applied: number[];
  readonly undeterminedPositions: number[];
}
export class AbortedError extends TesseraError {}
export class ClosedError extends TesseraError {}

/** Bytes of a key or value: a Uint8Array as is, a string as UTF-8. */
export function toBytes(v: Bytes | ArrayBufferView | ArrayBuffer, what?: string): Uint8Array;
/** UTF-8 text of bytes (`null` stays `null`). */
export function getString(bytes: Uint8Array | null): string | null;

/**
 * A connection to a Tessera cluster. Requests go straight to each region's leader; the
 * routing cache is fixed by the cluster's redirects; writes are retried with the same
 * session sequence number, so each applies at most once.
 */
export class Client {
  static connect(options: ConnectOptions): Promise<Client>;
  /** How this client reaches the cluster. */
  readonly transport: 'websocket' | 'webtransport';
  get(key: Bytes, opts?: CallOptions): Promise<Uint8Array | null>;
  getString(key: Bytes, opts?: CallOptions): Promise<string | null>;
  getStale(key: Bytes, opts?: CallOptions): Promise<Uint8Array | null>;
  put(key: Bytes, value: Bytes, opts?: CallOptions): Promise<void>;
  delete(key: Bytes, opts?: CallOptions): Promise<boolean>;
  append(key: Bytes, value: Bytes, opts?: CallOptions): Promise<number>;
  compareAndSwap(key: Bytes, expected: Bytes | null, value: Bytes | null, opts?: CallOptions): Promise<CasOutcome>;
  batchGet(keys: Bytes[], opts?: CallOptions): Promise<(Uint8Array | null)[]>;
  batchPut(pairs: [Bytes, Bytes][], opts?: CallOptions): Promise<void>;
  scan(start?: Bytes, end?: Bytes, opts?: ScanOptions): AsyncGenerator<[Uint8Array, Uint8Array], void, undefined>;
  clusterStatus(opts?: CallOptions): Promise<{ nodes: NodeStatus[]; regions: RegionStatus[] }>;
  close(): void;
}
