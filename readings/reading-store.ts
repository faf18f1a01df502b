import type { StoredReading } from './reading.ts'

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
  /** latest() for many patients in one round trip (a worklist); patients with no readings are absent. */
  latestForPatients (patientIds: readonly string[]): Promise<Map<string, StoredReading[]>>
  /** The newest `limit` readings of one metric per patient, newest first (the last two NEWS2 scores of a worklist). */
  recentForPatients (patientIds: readonly string[], metric: string, limit: number): Promise<Map<string, StoredReading[]>>
  aggregate (q: AggregateQuery): Promise<AggregateBucket[]>
  /** Throws when the store cannot be reached. */
  ping (): Promise<void>
  close (): Promise<void>
}

/**
 * Most buckets one aggregate may produce: beyond this it is a bulk export, not a chart. The
 * stores guard with it; the API checks it first (api/routes/readings.ts).
 */
export const maxAggregateBuckets = 10_000

/**
 * ReadingPosition order: ts desc, then deviceId asc, then metric asc, comparing strings by
 * code unit (Postgres side: COLLATE "C"), so every store pages identically.
 */
export function compareReadingPositions (a: ReadingPosition, b: ReadingPosition): number {
  if (a.ts !== b.ts) return b.ts - a.ts
  if (a.deviceId !== b.deviceId) return a.deviceId < b.deviceId ? -1 : 1
  if (a.metric !== b.metric) return a.metric < b.metric ? -1 : 1
  return 0
}

/**
 * The empty buckets of an aggregate query: starts aligned to the epoch (floor(from / every) *
 * every) up to the last start before `to`, value null (0 for count). Every store fills these,
 * so an empty bucket looks the same whichever store answered.
 */
export function aggregateBuckets (q: Pick<AggregateQuery, 'from' | 'to' | 'everyMs' | 'fn'>): AggregateBucket[] {
  if (!Number.isSafeInteger(q.everyMs) || q.everyMs < 1) throw new RangeError('everyMs must be a positive integer')
  if (!Number.isSafeInteger(q.from) || !Number.isSafeInteger(q.to)) throw new RangeError('from and to must be integers (ms since epoch)')
  if (q.to <= q.from) return []
  const first = Math.floor(q.from / q.everyMs) * q.everyMs
  const count = Math.ceil((q.to - first) / q.everyMs)
  if (count > maxAggregateBuckets) throw new RangeError(`aggregate would produce ${count} buckets (at most ${maxAggregateBuckets})`)
  const empty = q.fn === 'count' ? 0 : null
  return Array.from({ length: count }, (_, i) => ({ ts: first + i * q.everyMs, value: empty }))
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Patient and device ids are uuid columns: anything else can match no row. */
export function isUuid (value: string): boolean {
  return uuidPattern.test(value)
}

/**
 * UUIDs compare case-insensitively (Postgres' uuid type) and come back in lower case; every
 * store keys them that way, so `…/patients/0A1B…` and `…/patients/0a1b…` see the same readings.
 */
export function canonicalId (id: string): string {
  return isUuid(id) ? id.toLowerCase() : id
}

/** The reads of a ReadingStore, by name (the label of vigil_reading_store_read_seconds). */
export type ReadingStoreRead = 'query' | 'latest' | 'latestForPatients' | 'recentForPatients' | 'aggregate'

/**
 * `store` with each read run through `around(read, run)` (which must call `run` and answer what it
 * answers): the one list of reads a wrapper needs. Writes, ping and close pass through.
 */
export function aroundReads (store: ReadingStore, around: <T>(read: ReadingStoreRead, run: () => Promise<T>) => Promise<T>): ReadingStore {
  return {
    kind: store.kind,
    write: async (readings) => { await store.write(readings) },
    query: async (q) => await around('query', async () => await store.query(q)),
    latest: async (patientId) => await around('latest', async () => await store.latest(patientId)),
    latestForPatients: async (ids) => await around('latestForPatients', async () => await store.latestForPatients(ids)),
    recentForPatients: async (ids, metric, limit) => await around('recentForPatients', async () => await store.recentForPatients(ids, metric, limit)),
    aggregate: async (q) => await around('aggregate', async () => await store.aggregate(q)),
    ping: async () => { await store.ping() },
    close: async () => { await store.close() }
  }
}

/** `store` with each read timed: `observe(read, seconds)` once it settles, answered or failed. */
export function timedReads (store: ReadingStore, observe: (read: ReadingStoreRead, seconds: number) => void): ReadingStore {
  return aroundReads(store, async (read, run) => {
    const started = performance.now()
    try {
      return await run()
    } finally {
      observe(read, (performance.now() - started) / 1000)
    }
  })
}
