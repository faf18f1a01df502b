import http from 'node:http'
import https from 'node:https'
import { InfluxDB } from '@influxdata/influxdb-client'
import type { Transport } from '@influxdata/influxdb-client'
import type { Logger } from 'pino'
import type { InfluxConfig } from '../config/config.ts'
import type { StoredReading } from './reading.ts'
import type { AggregateBucket, AggregateQuery, ReadingQuery, ReadingStore } from './reading-store.ts'
import { aggregateBuckets, canonicalId, compareReadingPositions } from './reading-store.ts'

/*
 * Data layout: measurement `reading`, tags patient_id/device_id/metric, fields value (float),
 * unit (string), seq (integer, omitted when null), timestamp = the device's ts in ms. A point's
 * identity is measurement + tag set + timestamp, so rewriting a reading overwrites it.
 *
 * Writes are one synchronous HTTP POST per write() through the client's transport, not the
 * client's WriteApi: WriteApi buffers and retries in memory, drops the oldest lines when its
 * buffer fills and resolves close() before in-flight batches finish. Durability is the
 * spool's job (readings/spool.ts); this store only reports the truth about each POST.
 *
 * Reads use InfluxQL over /query, which InfluxDB 1.x, 2.7+ (virtual DBRP mapping: database
 * = bucket name) and 3.x all serve, so one read path covers every version.
 */

export const measurement = 'reading'

export type InfluxApi = 'v1' | 'v2'

/**
 * Why a request to InfluxDB failed. The message never carries line protocol or values.
 * `rejectsData`: the store will never take these points as it stands (see dataRejections);
 * everything else — configuration (series limits, auth, a missing database), availability —
 * is cured by fixing the store, so the spool keeps the readings and retries.
 */
export class InfluxStoreError extends Error {
  readonly rejectsData: boolean
  constructor (message: string, readonly statusCode: number | null, readonly retriable: boolean, options?: ErrorOptions & { rejectsData?: boolean }) {
    super(message, options)
    this.name = 'InfluxStoreError'
    this.rejectsData = options?.rejectsData ?? false
  }
}

// --- line protocol (pure) ---------------------------------------------------------------

/**
 * Escapes a tag value (or tag key) for line protocol: comma, space and equals sign take a
 * backslash. InfluxDB 1.x keeps other backslashes literally (`\\` is stored as two
 * characters) and rejects a tag value ending in one, so a tag holding a backslash cannot be
 * written faithfully: refuse it, as well as newlines (which end a line) and empty values (an
 * empty tag is silently dropped).
 */
export function escapeTagValue (value: string, name: string): string {
  if (value === '') throw new RangeError(`${name} must not be empty`)
  if (/[\\\n\r]/.test(value)) throw new RangeError(`${name} must not contain a backslash or line break`)
  return value.replace(/[, =]/g, (c) => `\\${c}`)
}

/** Escapes a string field value: double quote and backslash take a backslash. */
export function escapeStringField (value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

export interface LineEncoder {
  /** One line of line protocol for a reading (precision ms). Tags are in key order, as InfluxDB stores them. */
  line (reading: StoredReading): string
  /** The lines of `readings`, one per line. */
  lines (readings: readonly StoredReading[]): string
}

const deviceIdTag = (id: string): string => escapeTagValue(canonicalId(id), 'deviceId')
const patientIdTag = (id: string): string => escapeTagValue(canonicalId(id), 'patientId')
const metricTag = (metric: string): string => escapeTagValue(metric, 'metric')

/**
 * Line protocol with the escaped ids, metrics and units it has seen kept by raw value (one
 * encoder per store): a fleet repeats a few thousand of each, and escaping each anew (id check,
 * lower case, three regular expressions) was most of the cost of a line (10,000 readings: 21–37
 * ms to encode before, 8–15 ms after, in two sessions of five rounds each, 2026-12-06). Only values that passed the checks are kept
 * (a refused one throws every time); a cache is emptied when it holds `maxCached`.
 */
export function createLineEncoder (maxCached = 100_000): LineEncoder {
  const deviceIds = new Map<string, string>()
  const patientIds = new Map<string, string>()
  const metrics = new Map<string, string>()
  const units = new Map<string, string>()

  function cached (cache: Map<string, string>, raw: string, encode: (raw: string) => string): string {
    let encoded = cache.get(raw)
    if (encoded === undefined) {
      encoded = encode(raw)
      if (cache.size >= maxCached) cache.clear()
      cache.set(raw, encoded)
    }
    return encoded
  }

  function line (reading: StoredReading): string {
    if (!Number.isFinite(reading.value)) throw new RangeError('reading value must be a finite number')
    if (!Number.isSafeInteger(reading.ts)) throw new RangeError('reading ts must be an integer (ms since epoch)')
    if (reading.seq !== null && !Number.isSafeInteger(reading.seq)) throw new RangeError('reading seq must be an integer or null')
    // A bare number is a float field: every value is written as float so the field's type never
    // conflicts between an integral and a fractional reading.
    // seq is always written: InfluxDB merges the fields of a rewritten point, so omitting seq
    // would keep an older write's value. -1 stands for "no seq" (device seqs are non-negative).
    return `${measurement},device_id=${cached(deviceIds, reading.deviceId, deviceIdTag)},metric=${cached(metrics, reading.metric, metricTag)},` +
      `patient_id=${cached(patientIds, reading.patientId, patientIdTag)} value=${String(reading.value)},unit=${cached(units, reading.unit, escapeStringField)},` +
      `seq=${reading.seq ?? -1}i ${reading.ts}`
  }

  return { line, lines: (readings) => readings.map(line).join('\n') }
}

/** One reading's line, with nothing cached (tests, one-offs): a store uses its LineEncoder. */
export function encodeReading (reading: StoredReading): string {
  return createLineEncoder().line(reading)
}

// --- InfluxQL (pure) --------------------------------------------------------------------

/**
 * An InfluxQL string literal. The InfluxQL scanner understands `\\`, `\'` and `\n` inside
 * single quotes and rejects a raw newline, so these are all escaped; nothing else can end the
 * literal. Patient ids reach queries from URLs: this is the only way they enter InfluxQL.
 */
export function influxqlString (value: string): string {
  return `'${value.replace(/[\\'\n]/g, (c) => c === '\n' ? '\\n' : `\\${c}`)}'`
}

/** An InfluxQL double-quoted identifier (database names in CREATE DATABASE). */
export function influxqlIdentifier (value: string): string {
  return `"${value.replace(/[\\"\n]/g, (c) => c === '\n' ? '\\n' : `\\${c}`)}"`
}

function msLiteral (ms: number, name: string): string {
  if (!Number.isSafeInteger(ms)) throw new RangeError(`${name} must be an integer (ms since epoch)`)
  return `${ms}ms`
}

/** WHERE clause for one patient's readings, optionally one metric and [from, to). */
export function readingsWhere (q: { patientId: string, metric?: string, from?: number, to?: number }): string {
  const parts = [`"patient_id" = ${influxqlString(canonicalId(q.patientId))}`]
  if (q.metric !== undefined) parts.push(`"metric" = ${influxqlString(q.metric)}`)
  if (q.from !== undefined) parts.push(`time >= ${msLiteral(q.from, 'from')}`)
  if (q.to !== undefined) parts.push(`time < ${msLiteral(q.to, 'to')}`)
  return parts.join(' AND ')
}

/**
 * Which write API a server speaks, from its `X-Influxdb-Version` header: `/api/v2/write`
 * exists from 1.8 on. No header (some proxies, Cloud) means a modern server.
 */
export function apiForVersion (version: string | undefined): InfluxApi {
  const match = /^v?(\d+)\.(\d+)/.exec(version?.trim() ?? '')
  if (match === null) return 'v2'
  const major = Number(match[1])
  const minor = Number(match[2])
  return major < 1 || (major === 1 && minor < 8) ? 'v1' : 'v2'
}

// --- InfluxQL responses -----------------------------------------------------------------

interface InfluxqlSeries {
  name?: string
  tags?: Record<string, string>
  columns: string[]
  values?: unknown[][]
  partial?: boolean
}

interface InfluxqlResponse {
  results?: Array<{ statement_id?: number, series?: InfluxqlSeries[], error?: string, partial?: boolean }>
  error?: string
}

interface Row { [column: string]: unknown }

function rowsOf (series: InfluxqlSeries): Row[] {
  return (series.values ?? []).map((values) => {
    const row: Row = Object.create(null) as Row
    series.columns.forEach((column, i) => { row[column] = values[i] })
    return row
  })
}

function num (value: unknown): number | null {
  return typeof value === 'number' ? value : null
}

function seqOf (value: unknown): number | null {
  return typeof value === 'number' && value >= 0 ? value : null
}

function str (value: unknown): string {
  return typeof value === 'string' ? value : ''
}

// --- HTTP errors ------------------------------------------------------------------------

/*
 * InfluxDB's error bodies quote the offending line (`unable to parse 'reading,patient_id=…
 * value=72 …'`) or query, so they never reach a message or a log: only a category does.
 */
const errorCategories: Array<[RegExp, string]> = [
  [/field type conflict/i, 'field type conflict'],
  [/unable to parse|invalid (field|tag|boolean|number|timestamp)|bad timestamp/i, 'line protocol rejected'],
  [/error parsing query/i, 'query rejected'],
  [/database not found|bucket .*not found|no dbrp mapping/i, 'database or bucket not found'],
  [/beyond retention policy/i, 'points beyond the retention policy'],
  [/max-values-per-tag|max-series-per-database|series limit/i, 'series limit reached'],
  [/authoriz|authenticat|token/i, 'not authorized'],
  [/timeout/i, 'timeout']
]

/*
 * Which write errors mean "these points, never" (docs/durability.md has the table). InfluxDB
 * 1.x answers 400 for all of them and for configuration limits alike ("partial write:
 * max-values-per-tag limit exceeded", "max-series-per-database limit exceeded"), so the status
 * alone decides nothing:
 * - line protocol rejected: the line itself is malformed or out of range (a timestamp InfluxDB
 *   cannot store); no setting changes that.
 * - field type conflict: the shard holds the field with another type (someone else wrote it);
 *   only deleting that data, or a later shard, takes the point, and blocking every reading
 *   behind it until then would be worse.
 * - beyond the retention policy: the point is older than the policy keeps. Lengthening the
 *   policy would take it, but holding it blocks every reading behind it, and those age past
 *   the policy too while they wait; set aside, replayed once the policy is changed.
 * 2.x answers 422 for such semantic rejections (schema conflicts, retention), so an unknown 422
 * counts as data too; an unknown 400 does not.
 */
const dataRejections = new Set(['field type conflict', 'line protocol rejected', 'points beyond the retention policy'])

function rejectsData (status: number, category: string | null): boolean {
  if (category !== null) return dataRejections.has(category)
  return status === 422
}

function categorize (text: string | undefined): string | null {
  if (text === undefined) return null
  for (const [pattern, category] of errorCategories) if (pattern.test(text)) return category
  return null
}

interface HttpLikeError { statusCode?: unknown, body?: unknown, code?: unknown, name?: unknown }

function toStoreError (operation: string, err: unknown): InfluxStoreError {
  const e = (err ?? {}) as HttpLikeError
  if (typeof e.statusCode === 'number') {
    const status = e.statusCode
    const category = categorize(typeof e.body === 'string' ? e.body : undefined) ??
      (status === 401 || status === 403 ? 'not authorized' : status === 404 ? 'not found' : status === 413 ? 'request too large' : null)
    // 4xx other than rate limiting will fail the same way again; the spool still retries
    // (it never drops), but logs these louder.
    const retriable = status >= 500 || status === 429 || status === 408
    return new InfluxStoreError(`InfluxDB ${operation} failed: HTTP ${status}${category === null ? '' : ` (${category})`}`, status, retriable,
      { rejectsData: operation === 'write' && rejectsData(status, category) })
  }
  if (e.name === 'RequestTimedOutError') return new InfluxStoreError(`InfluxDB ${operation} failed: request timed out`, null, true)
  if (e.name === 'AbortError') return new InfluxStoreError(`InfluxDB ${operation} failed: request aborted`, null, true)
  const code = typeof e.code === 'string' ? e.code : 'network error'
  return new InfluxStoreError(`InfluxDB ${operation} failed: ${code}`, null, true)
}

// --- the store --------------------------------------------------------------------------

export interface InfluxReadingStoreOptions {
  /** Per-request socket timeout (ms). */
  timeoutMs?: number
}

/**
 * ReadingStore on InfluxDB. With `api: 'auto'` it asks `/ping` which version answers; for
 * v1 (InfluxDB before 1.8) it creates the database (named after the bucket) if missing.
 */
export async function createInfluxReadingStore (config: InfluxConfig, log: Logger, options: InfluxReadingStoreOptions = {}): Promise<ReadingStore> {
  const storeLog = log.child({ component: 'influx-readings' })
  const base = new URL(config.url)
  const agent = base.protocol === 'https:' ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true })
  const lineEncoder = createLineEncoder()
  // No token here: the Authorization header depends on the API version, set per request.
  const transport: Transport = new InfluxDB({
    url: config.url.replace(/\/+$/, ''),
    timeout: options.timeoutMs ?? 10_000,
    transportOptions: { agent }
  }).transport

  let closed = false
  let api: InfluxApi
  let version: string | undefined

  const authHeaders = (): Record<string, string> => {
    if (config.token === '') return {}
    // InfluxDB before 1.8 knows only basic auth (token = `user:password`); 1.8+ accepts tokens.
    if (api === 'v1' && config.token.includes(':')) {
      return { authorization: `Basic ${Buffer.from(config.token).toString('base64')}` }
    }
    return { authorization: `Token ${config.token}` }
  }

  async function ping (): Promise<string | undefined> {
    let header: string | undefined
    try {
      await transport.request('/ping', '', { method: 'GET' }, (headers) => {
        const value = headers['x-influxdb-version']
        header = Array.isArray(value) ? value[0] : value
      })
    } catch (err) {
      throw toStoreError('ping', err)
    }
    return header
  }

  async function influxql (statement: string, method: 'GET' | 'POST' = 'GET'): Promise<InfluxqlSeries[]> {
    if (closed) throw new InfluxStoreError('InfluxDB store is closed', null, false)
    const params = new URLSearchParams({ db: config.bucket, epoch: 'ms', q: statement })
    let body: InfluxqlResponse
    try {
      body = method === 'GET'
        ? await transport.request(`/query?${params.toString()}`, '', { method, headers: authHeaders() })
        : await transport.request('/query', params.toString(), {
          method,
          headers: { ...authHeaders(), 'content-type': 'application/x-www-form-urlencoded' }
        })
    } catch (err) {
      throw toStoreError('query', err)
    }
    // Statement errors come back as HTTP 200 with `error` inside the result.
    if (body === undefined || body === null || typeof body !== 'object') {
      throw new InfluxStoreError('InfluxDB query failed: unexpected response', null, true)
    }
    const failure = body.error ?? body.results?.find((r) => r.error !== undefined)?.error
    if (failure !== undefined) {
      throw new InfluxStoreError(`InfluxDB query failed: ${categorize(failure) ?? 'statement error'}`, 200, false)
    }
    const series = (body.results ?? []).flatMap((r) => {
      if (r.partial === true) throw new InfluxStoreError('InfluxDB query failed: result truncated (max-row-limit)', 200, false)
      return r.series ?? []
    })
    if (series.some((s) => s.partial === true)) throw new InfluxStoreError('InfluxDB query failed: result truncated (max-row-limit)', 200, false)
    return series
  }

  async function write (readings: readonly StoredReading[]): Promise<void> {
    if (closed) throw new InfluxStoreError('InfluxDB store is closed', null, false)
    if (readings.length === 0) return
    await ensureReady()
    const body = lineEncoder.lines(readings)
    const path = api === 'v1'
      ? `/write?${new URLSearchParams({ db: config.bucket, precision: 'ms' }).toString()}`
      : `/api/v2/write?${new URLSearchParams({ org: config.org, bucket: config.bucket, precision: 'ms' }).toString()}`
    try {
      // transport.request resolves only on a 2xx (204 from InfluxDB) and rejects otherwise;
      // a 400 "partial write" also rejects, and the caller's retry rewrites every line.
      await transport.request(path, body, {
        method: 'POST',
        headers: { ...authHeaders(), 'content-type': 'text/plain; charset=utf-8' },
        // Off by default: on a LAN the bytes cost less than deflating them here and inflating them in
        // influxd (~10 µs a reading more there at 8,500 readings/s: docs/performance.md).
        ...(config.gzipWrites === true ? { gzipThreshold: 4096 } : {})
      })
    } catch (err) {
      throw toStoreError('write', err)
    }
  }

  function readingFromRow (patientId: string, row: Row, valueColumn = 'value'): StoredReading {
    return {
      patientId: canonicalId(patientId),
      deviceId: str(row.device_id),
      metric: str(row.metric),
      value: num(row[valueColumn]) ?? Number.NaN,
      unit: str(row.unit),
      ts: num(row.time) ?? Number.NaN,
      seq: seqOf(row.seq)
    }
  }

  const columns = '"value", "unit", "seq", "device_id", "metric"'

  /** Every reading at exactly `ts` matching the filters, in ReadingPosition order. */
  async function readingsAt (q: ReadingQuery, ts: number): Promise<StoredReading[]> {
    const where = `${readingsWhere(q)} AND time = ${msLiteral(ts, 'ts')}`
    const series = await influxql(`SELECT ${columns} FROM "${measurement}" WHERE ${where}`)
    return series.flatMap(rowsOf).map((row) => readingFromRow(q.patientId, row)).sort(compareReadingPositions)
  }

  /*
   * Paging. InfluxQL orders by time only, so rows sharing a timestamp come back in series
   * order, not ReadingPosition order. Rows strictly newer than the page's last timestamp are
   * complete (ORDER BY time DESC returns all of them before any older one) and are sorted here;
   * the boundary timestamp's rows are fetched whole and sorted, so a page boundary inside a
   * tie group neither skips nor repeats. The cursor's own timestamp is handled the same way.
   */
  async function query (q: ReadingQuery): Promise<StoredReading[]> {
    await ensureReady()
    if (!Number.isSafeInteger(q.limit) || q.limit < 1) throw new RangeError('limit must be a positive integer')
    const page: StoredReading[] = []
    let to = q.to
    if (q.after !== undefined) {
      const after = q.after
      const rest = (await readingsAt(q, after.ts)).filter((r) => compareReadingPositions(r, { ...after, deviceId: canonicalId(after.deviceId) }) > 0)
      page.push(...rest.slice(0, q.limit))
      if (page.length === q.limit) return page
      to = to === undefined ? after.ts : Math.min(to, after.ts)
    }
    const remaining = q.limit - page.length
    const where = readingsWhere({ ...q, to })
    const series = await influxql(`SELECT ${columns} FROM "${measurement}" WHERE ${where} ORDER BY time DESC LIMIT ${remaining}`)
    const rows = series.flatMap(rowsOf).map((row) => readingFromRow(q.patientId, row))
    if (rows.length < remaining) {
      page.push(...rows.sort(compareReadingPositions))
      return page
    }
    const boundary = rows[rows.length - 1]!.ts
    const newer = rows.filter((r) => r.ts > boundary).sort(compareReadingPositions)
    const tied = await readingsAt({ ...q, to }, boundary)
    page.push(...[...newer, ...tied].slice(0, remaining))
    return page
  }

  async function latest (patientId: string): Promise<StoredReading[]> {
    await ensureReady()
    // last() is a selector: the other fields selected with it come from the same point, and
    // the row's time is that point's. One row per (metric, device); the newest wins per metric.
    const series = await influxql(`SELECT last("value"), "unit", "seq" FROM "${measurement}" WHERE ${readingsWhere({ patientId })} GROUP BY "metric", "device_id"`)
    const newest = new Map<string, StoredReading>()
    for (const s of series) {
      for (const row of rowsOf(s)) {
        const reading = readingFromRow(patientId, { ...row, metric: s.tags?.metric, device_id: s.tags?.device_id }, 'last')
        const current = newest.get(reading.metric)
        if (current === undefined || compareReadingPositions(reading, current) < 0) newest.set(reading.metric, reading)
      }
    }
    return [...newest.values()].sort((a, b) => a.metric < b.metric ? -1 : a.metric > b.metric ? 1 : 0)
  }

  // Patients per InfluxQL statement: the statement travels in the query string.
  const PATIENTS_PER_QUERY = 100
  async function perChunk (patientIds: readonly string[], statement: (where: string) => string, collect: (series: InfluxqlSeries) => void): Promise<void> {
    await ensureReady()
    for (let i = 0; i < patientIds.length; i += PATIENTS_PER_QUERY) {
      const chunk = patientIds.slice(i, i + PATIENTS_PER_QUERY)
      const where = `(${chunk.map((id) => `"patient_id" = ${influxqlString(canonicalId(id))}`).join(' OR ')})`
      for (const s of await influxql(statement(where))) collect(s)
    }
  }

  async function latestForPatients (patientIds: readonly string[]): Promise<Map<string, StoredReading[]>> {
    const newest = new Map<string, Map<string, StoredReading>>()
    await perChunk(patientIds, (where) => `SELECT last("value"), "unit", "seq" FROM "${measurement}" WHERE ${where} GROUP BY "patient_id", "metric", "device_id"`, (s) => {
      const patientId = s.tags?.patient_id
      if (patientId === undefined) return
      const metrics = newest.get(patientId) ?? new Map<string, StoredReading>()
      newest.set(patientId, metrics)
      for (const row of rowsOf(s)) {
        const reading = readingFromRow(patientId, { ...row, metric: s.tags?.metric, device_id: s.tags?.device_id }, 'last')
        const current = metrics.get(reading.metric)
        if (current === undefined || compareReadingPositions(reading, current) < 0) metrics.set(reading.metric, reading)
      }
    })
    return new Map([...newest].map(([id, metrics]) => [id, [...metrics.values()].sort((a, b) => a.metric < b.metric ? -1 : a.metric > b.metric ? 1 : 0)]))
  }

  async function recentForPatients (patientIds: readonly string[], metric: string, limit: number): Promise<Map<string, StoredReading[]>> {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError('limit must be a positive integer')
    const out = new Map<string, StoredReading[]>()
    // GROUP BY a tag subset merges a patient's device series; LIMIT then applies per patient.
    await perChunk(patientIds, (where) => `SELECT ${columns} FROM "${measurement}" WHERE ${where} AND "metric" = ${influxqlString(metric)} GROUP BY "patient_id" ORDER BY time DESC LIMIT ${limit}`, (s) => {
      const patientId = s.tags?.patient_id
      if (patientId === undefined) return
      const rows = rowsOf(s).map((row) => readingFromRow(patientId, row)).sort(compareReadingPositions)
      out.set(canonicalId(patientId), [...(out.get(canonicalId(patientId)) ?? []), ...rows].sort(compareReadingPositions).slice(0, limit))
    })
    return out
  }

  async function aggregate (q: AggregateQuery): Promise<AggregateBucket[]> {
    await ensureReady()
    const buckets = aggregateBuckets(q)
    if (buckets.length === 0) return buckets
    const fn = { mean: 'mean', min: 'min', max: 'max', count: 'count' }[q.fn]
    if (fn === undefined) throw new RangeError('unknown aggregate function')
    // GROUP BY time() buckets are aligned to the epoch, like ours; buckets are matched by start
    // time below, so fill() only saves bytes, and empty results leave our nulls/zeros.
    const series = await influxql(`SELECT ${fn}("value") AS "v" FROM "${measurement}" WHERE ${readingsWhere(q)} ` +
      `GROUP BY time(${msLiteral(q.everyMs, 'everyMs')}) fill(${q.fn === 'count' ? '0' : 'null'})`)
    const byStart = new Map(buckets.map((b) => [b.ts, b]))
    for (const row of series.flatMap(rowsOf)) {
      const bucket = byStart.get(num(row.time) ?? Number.NaN)
      const value = num(row.v)
      if (bucket !== undefined && value !== null) bucket.value = value
    }
    return buckets
  }

  // Detection (and, for v1, CREATE DATABASE) needs InfluxDB to answer. Vigil must start while
  // it is down — the spool holds readings meanwhile — so a failed attempt is retried by the
  // next write, query or ping.
  let ready: Promise<void> | null = null
  function ensureReady (): Promise<void> {
    ready ??= (async () => {
      version = await ping()
      api = config.api === 'auto' ? apiForVersion(version) : config.api
      if (api === 'v1') {
        // InfluxDB 1.x has no buckets: the bucket name is the database. CREATE DATABASE is a
        // no-op when it exists.
        await influxql(`CREATE DATABASE ${influxqlIdentifier(config.bucket)}`, 'POST')
      }
      storeLog.info({ api, version: version ?? null, host: base.host, bucket: config.bucket }, 'InfluxDB readings store ready')
    })().catch((err: unknown) => {
      ready = null
      throw err
    })
    return ready
  }
  try {
    await ensureReady()
  } catch (err) {
    storeLog.warn({ err: (err as Error).message, host: base.host }, 'InfluxDB unreachable at start: readings are spooled until it answers')
  }
  return {
    kind: 'influxdb',
    write,
    query,
    latest,
    latestForPatients,
    recentForPatients,
    aggregate,
    ping: async () => {
      if (closed) throw new InfluxStoreError('InfluxDB store is closed', null, false)
      await ensureReady()
      await ping()
      // /ping answers even when the bucket is missing or the token cannot read it.
      await influxql(`SELECT "value" FROM "${measurement}" WHERE time >= now() - 1m LIMIT 1`)
    },
    close: async () => {
      closed = true
      agent.destroy()
    }
  }
}
