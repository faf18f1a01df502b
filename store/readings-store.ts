import type { StoredReading } from '../ingest/reading.ts'

export interface ReadingQuery {
  patientId: string
  metric?: string
  /** Inclusive lower bound, ms since epoch. */
  from?: number
  /** Exclusive upper bound, ms since epoch. */
  to?: number
  limit: number
  /** Resume after this position (the last row of the previous page). */
  after?: ReadingPosition
}

/** Total order of readings for paging: ts desc, then deviceId asc, then metric asc. */
export interface ReadingPosition { ts: number, deviceId: string, metric: string }

export type AggregateFn = 'mean' | 'min' | 'max' | 'count'

export interface AggregateQuery {
  patientId: string
  metric: string
  from: number
  to: number
  /** Bucket width in ms. Buckets are aligned to the epoch. */
  everyMs: number
  fn: AggregateFn
}

export interface AggregateBucket {
  /** Bucket start, ms since epoch. */
  ts: number
  /** null when the bucket holds no readings (count gives 0). */
  value: number | null
}

/**
 * Where readings live. Two implementations: Postgres table (embedded default) and InfluxDB.
 * write() must be idempotent: the same (patientId, deviceId, metric, ts) written twice is stored once
 * (the later write's value wins).
 */
export interface ReadingStore {
  readonly kind: 'postgres' | 'influxdb'
  /** Resolves only once every reading is durably stored; rejects otherwise (nothing is half-claimed). */
  write (readings: readonly StoredReading[]): Promise<void>
  /** Newest first, in ReadingPosition order. */
  query (q: ReadingQuery): Promise<StoredReading[]>
  /** Latest reading per metric for the patient. */
  latest (patientId: string): Promise<StoredReading[]>
  aggregate (q: AggregateQuery): Promise<AggregateBucket[]>
  /** Throws when the store cannot be reached. */
  ping (): Promise<void>
  close (): Promise<void>
}
