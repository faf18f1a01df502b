import type pg from 'pg'
import type { StoredReading } from './reading.ts'
import { aggregateBuckets, canonicalId, compareReadingPositions, isUuid, type AggregateBucket, type AggregateQuery, type ReadingPosition, type ReadingQuery, type ReadingStore } from './reading-store.ts'


// Exact ms <-> timestamptz: extract() returns numeric since PG 14, and int8 * interval stays
// exact below 2^53 µs, unlike to_timestamp(float8).
const tsMs = '(extract(epoch from ts) * 1000)::int8'
const msToTs = (param: string): string => `(timestamptz 'epoch' + ${param}::int8 * interval '1 millisecond')`

interface ReadingRow {
  device_id: string
  metric: string
  value: number
  unit: string
  seq: string | null
  ts_ms: string
}

function readingFromRow (patientId: string, row: ReadingRow): StoredReading {
  return {
    patientId,
    deviceId: row.device_id,
    metric: row.metric,
    value: row.value,
    unit: row.unit,
    ts: Number(row.ts_ms),
    seq: row.seq === null ? null : Number(row.seq)
  }
}

const readingColumns = `device_id::text AS device_id, metric, value, unit, seq, ${tsMs} AS ts_ms`

/** ReadingStore on the `readings` table (store/migrations/002_readings.sql). */
export function createPostgresReadingStore (pool: pg.Pool): ReadingStore {
  async function write (readings: readonly StoredReading[]): Promise<void> {
    if (readings.length === 0) return
    // ON CONFLICT DO UPDATE may not touch one row twice in a statement: keep the last of
    // duplicate keys (the later write wins, as it would across statements).
    const byKey = new Map<string, StoredReading>()
    for (const r of readings) {
      if (!isUuid(r.patientId)) throw new RangeError('patientId must be a uuid')
      if (!isUuid(r.deviceId)) throw new RangeError('deviceId must be a uuid')
      if (!Number.isSafeInteger(r.ts)) throw new RangeError('reading ts must be an integer (ms since epoch)')
      if (!Number.isFinite(r.value)) throw new RangeError('reading value must be a finite number')
      byKey.set(`${r.patientId.toLowerCase()} ${r.metric} ${r.ts} ${r.deviceId.toLowerCase()}`, r)
    }
    const rows = [...byKey.values()]
    // One statement over unnest()ed arrays: atomic, and 7 parameters whatever the batch size.
    await pool.query({
      name: 'vigil-write-readings',
      text: `INSERT INTO readings (patient_id, metric, ts, device_id, value, unit, seq)
       SELECT p, m, ${msToTs('t')}, d, v, u, s
       FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::uuid[], $5::float8[], $6::text[], $7::int8[]) AS r(p, m, t, d, v, u, s)
       ON CONFLICT (patient_id, metric, ts, device_id)
       DO UPDATE SET value = excluded.value, unit = excluded.unit, seq = excluded.seq`,
      values: [
        rows.map((r) => r.patientId),
        rows.map((r) => r.metric),
        rows.map((r) => r.ts),
        rows.map((r) => r.deviceId),
        rows.map((r) => r.value),
        rows.map((r) => r.unit),
        rows.map((r) => r.seq)
      ]
    })
  }

  async function query (q: ReadingQuery): Promise<StoredReading[]> {
    if (!Number.isSafeInteger(q.limit) || q.limit < 1) throw new RangeError('limit must be a positive integer')
    if (!isUuid(q.patientId)) return []
    const params: unknown[] = [q.patientId]
    const where = ['patient_id = $1']
    const param = (value: unknown): string => { params.push(value); return `$${params.length}` }
    if (q.metric !== undefined) where.push(`metric = ${param(q.metric)}`)
    if (q.from !== undefined) where.push(`ts >= ${msToTs(param(q.from))}`)
    if (q.to !== undefined) where.push(`ts < ${msToTs(param(q.to))}`)
    if (q.after !== undefined) {
      // Keyset: mixed directions rule out one row comparison; the ts part uses the index,
      // the tie part compares as text so a malformed cursor id cannot fail a uuid cast.
      // The redundant `ts <= after` is what the index can seek on: without it Postgres reads the
      // patient's readings from the newest down to the cursor on every page (found by
      // bench/bulk-export.ts: pages grew slower as an export went on).
      const ts = msToTs(param(q.after.ts))
      where.push(`ts <= ${ts}`)
      where.push(`(ts < ${ts} OR (ts = ${ts} AND (device_id::text COLLATE "C", metric COLLATE "C") > (${param(canonicalId(q.after.deviceId))}, ${param(q.after.metric)})))`)
    }
    const result = await pool.query<ReadingRow>(
      `SELECT ${readingColumns} FROM readings WHERE ${where.join(' AND ')}
       ORDER BY ts DESC, device_id::text COLLATE "C", metric COLLATE "C" LIMIT ${param(q.limit)}`,
      params
    )
    return result.rows.map((row) => readingFromRow(canonicalId(q.patientId), row))
  }

  async function latest (patientId: string): Promise<StoredReading[]> {
    if (!isUuid(patientId)) return []
    // Skip scan over the primary key (patient_id, metric, ts, device_id): one index probe per
    // metric instead of reading the patient's whole history.
    const result = await pool.query<ReadingRow>(
      `WITH RECURSIVE metrics AS (
         (SELECT metric FROM readings WHERE patient_id = $1 ORDER BY metric LIMIT 1)
         UNION ALL
         SELECT (SELECT r.metric FROM readings r WHERE r.patient_id = $1 AND r.metric > metrics.metric ORDER BY r.metric LIMIT 1)
         FROM metrics WHERE metrics.metric IS NOT NULL
       )
       SELECT l.* FROM metrics CROSS JOIN LATERAL (
         SELECT ${readingColumns} FROM readings
         WHERE patient_id = $1 AND readings.metric = metrics.metric
         ORDER BY ts DESC, device_id::text COLLATE "C" LIMIT 1
       ) l`,
      [patientId]
    )
    return result.rows
      .map((row) => readingFromRow(canonicalId(patientId), row))
      .sort((a, b) => a.metric < b.metric ? -1 : a.metric > b.metric ? 1 : 0)
  }

  function byPatient (rows: Array<ReadingRow & { for_patient: string }>): Map<string, StoredReading[]> {
    const out = new Map<string, StoredReading[]>()
    for (const row of rows) {
      const id = canonicalId(row.for_patient)
      const list = out.get(id) ?? []
      list.push(readingFromRow(id, row))
      out.set(id, list)
    }
    return out
  }

  async function latestForPatients (patientIds: readonly string[]): Promise<Map<string, StoredReading[]>> {
    const ids = patientIds.filter(isUuid)
    if (ids.length === 0) return new Map()
    // latest()'s skip scan, for every patient at once.
    const result = await pool.query<ReadingRow & { for_patient: string }>(
      `WITH RECURSIVE metrics AS (
         SELECT p.id AS patient_id, (SELECT r.metric FROM readings r WHERE r.patient_id = p.id ORDER BY r.metric LIMIT 1) AS metric
         FROM unnest($1::uuid[]) AS p(id)
         UNION ALL
         SELECT m.patient_id, (SELECT r.metric FROM readings r WHERE r.patient_id = m.patient_id AND r.metric > m.metric ORDER BY r.metric LIMIT 1)
         FROM metrics m WHERE m.metric IS NOT NULL
       )
       SELECT m.patient_id::text AS for_patient, l.* FROM metrics m CROSS JOIN LATERAL (
         SELECT ${readingColumns} FROM readings
         WHERE readings.patient_id = m.patient_id AND readings.metric = m.metric
         ORDER BY ts DESC, device_id::text COLLATE "C" LIMIT 1
       ) l
       ORDER BY 1, l.metric`,
      [ids]
    )
    return byPatient(result.rows)
  }

  async function recentForPatients (patientIds: readonly string[], metric: string, limit: number): Promise<Map<string, StoredReading[]>> {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError('limit must be a positive integer')
    const ids = patientIds.filter(isUuid)
    if (ids.length === 0) return new Map()
    const result = await pool.query<ReadingRow & { for_patient: string }>(
      `SELECT p.id::text AS for_patient, l.* FROM unnest($1::uuid[]) AS p(id) CROSS JOIN LATERAL (
         SELECT ${readingColumns} FROM readings WHERE readings.patient_id = p.id AND readings.metric = $2
         ORDER BY ts DESC, device_id::text COLLATE "C" LIMIT $3
       ) l`,
      [ids, metric, limit]
    )
    return byPatient(result.rows)
  }

  async function aggregate (q: AggregateQuery): Promise<AggregateBucket[]> {
    const buckets = aggregateBuckets(q)
    if (buckets.length === 0 || !isUuid(q.patientId)) return buckets
    const fn = { mean: 'avg(value)', min: 'min(value)', max: 'max(value)', count: 'count(*)' }[q.fn]
    if (fn === undefined) throw new RangeError('unknown aggregate function')
    const result = await pool.query<{ bucket: string, v: number | string | null }>(
      `SELECT (floor(${tsMs}::numeric / $4) * $4)::int8 AS bucket, ${fn} AS v
       FROM readings
       WHERE patient_id = $1 AND metric = $2 AND ts >= ${msToTs('$3')} AND ts < ${msToTs('$5')}
       GROUP BY 1`,
      [q.patientId, q.metric, q.from, q.everyMs, q.to]
    )
    const byStart = new Map(buckets.map((b) => [b.ts, b]))
    for (const row of result.rows) {
      const bucket = byStart.get(Number(row.bucket))
      if (bucket !== undefined && row.v !== null) bucket.value = Number(row.v)
    }
    return buckets
  }

  return {
    kind: 'postgres',
    write,
    query,
    latest,
    latestForPatients,
    recentForPatients,
    aggregate,
    ping: async () => { await pool.query('SELECT 1') },
    // The pool belongs to the database handle (store/database.ts), which closes it.
    close: async () => {}
  }
}
