import type { SparseHistogram } from './latency-histogram.ts'

/** The IPC messages between bench/run.ts and its load-generator child processes. */

export interface DeviceCredential {
  deviceId: string
  password: string
  /** The broker port this device connects to, when not the command's `port` (several Vigil processes). */
  port?: number
}

export type GeneratorCommand =
  | {
    type: 'connect'
    host: string
    port: number
    devices: DeviceCredential[]
    /** Connection attempts in flight at once (the broker's accept backlog is finite). */
    concurrency: number
  }
  | {
    type: 'run'
    /** Messages per second offered by this process, spread round-robin over its devices. */
    ratePerSecond: number
    durationMs: number
    /** After the window, how long to wait for outstanding PUBACKs. */
    drainMs: number
    /** Report 1 in `sampleEvery` PUBACKed messages as a `sample` (0: none). */
    sampleEvery: number
    /** Readings per message (1: the common shape; 6: the simulator's; 50: a backlog upload). */
    readingsPerMessage: number
  }
  | { type: 'disconnect' }

export interface ConnectResult {
  type: 'connected'
  connected: number
  refused: number
  failed: number
  firstError: string | null
  elapsedMs: number
}

export interface RunResult {
  type: 'ran'
  /** Messages due by the schedule in the window. */
  offered: number
  sent: number
  /** Not sent because the generator fell more than 50 ms behind its schedule. */
  behind: number
  /** PUBACKs received before the window ended. */
  ackedInWindow: number
  /** PUBACKs received before the drain ended. */
  acked: number
  /** Messages whose connection closed before their PUBACK. */
  lost: number
  /** Still unacknowledged when the drain ended. */
  unacked: number
  disconnects: number
  /** Device timestamps (ms) of the first and last message sent: the range to count in InfluxDB. */
  firstTs: number
  lastTs: number
  windowMs: number
  /** This process's CPU (user + system) over the window, as a fraction of one core. */
  cpuFraction: number
  latency: { buckets: SparseHistogram, maxUs: number }
}

/** One sampled message, sent as soon as its PUBACK arrives (for publish → queryable). */
export interface SampleReport {
  type: 'sample'
  deviceId: string
  seq: number
  ts: number
  /** Wall clock (ms since epoch, fractional) of the publish. */
  publishedAt: number
}

export type GeneratorReport =
  | { type: 'ready' }
  | ConnectResult
  | RunResult
  | SampleReport
  | { type: 'disconnected' }
  | { type: 'error', message: string }
