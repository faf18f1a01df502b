import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { loadConfig } from '../../config/config.ts'
import { createLogger } from '../../observability/logger.ts'
import { startVigil, type Vigil } from '../../vigil.ts'
import { createTestDatabase } from './postgres.ts'
import { seedEmbeddedDatabase } from './pglite-template.ts'

export const adminToken = 'test-admin-token-0123456789abcdef'

export interface LogLine {
  level: number
  msg?: string
  [field: string]: unknown
}

export interface LogCapture {
  /** A pino destination: every line the logger writes lands in `lines`, parsed. */
  readonly stream: { write (line: string): void }
  readonly lines: LogLine[]
  /** Lines with this message, from index `since` on. */
  find (msg: string, since?: number): LogLine[]
}

export function createLogCapture (): LogCapture {
  const lines: LogLine[] = []
  return {
    stream: {
      write (chunk: string) {
        for (const text of chunk.split('\n')) if (text !== '') lines.push(JSON.parse(text) as LogLine)
      }
    },
    lines,
    find: (msg, since = 0) => lines.slice(since).filter((line) => line.msg === msg)
  }
}

/** Prometheus text exposition → value per series, keyed as written (`name{label="x"}`). */
export function parseMetrics (text: string): Map<string, number> {
  const series = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    series.set(line.slice(0, at), Number(line.slice(at + 1)))
  }
  return series
}

/** Per-label values of one counter, e.g. `vigil_mqtt_refused_total` → { topic_not_allowed: 3 }. */
export function counterByLabel (series: Map<string, number>, name: string): Map<string, number> {
  const values = new Map<string, number>()
  for (const [key, value] of series) {
    const match = new RegExp(`^${name}\\{[a-z_]+="([^"]*)"\\}$`).exec(key)
    if (match !== null) values.set(match[1]!, value)
  }
  return values
}

export interface CapturedVigil extends Vigil {
  logs: LogCapture
  api<T = any> (method: string, route: string, body?: unknown): Promise<{ status: number, body: T }>
  metrics (): Promise<Map<string, number>>
  /** A patient and a device assigned to it from `assignedFrom` (default an hour ago), with a fresh credential. */
  provision (assignedFrom?: number): Promise<{ patientId: string, deviceId: string, password: string, assignedFrom: number }>
}

/**
 * Starts the whole service in-process on free ports with its logs captured (LOG_LEVEL info
 * unless `env` says otherwise: refusals are warnings, rejections info). Readings and metadata go to
 * a fresh database on the machine's PostgreSQL (test/helpers/postgres.ts), or to embedded
 * PGlite with `database: 'pglite'`. Close it with `close()`.
 */
export async function startVigilWithLogCapture (options: { env?: Record<string, string>, database?: 'postgres' | 'pglite', /** kept at close when given */ dataDir?: string } = {}): Promise<CapturedVigil> {
  const logs = createLogCapture()
  const dataDir = options.dataDir ?? await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-fuzz-'))
  const database = options.database === 'pglite' ? null : await createTestDatabase()
  const config = loadConfig({
    HTTP_PORT: '0',
    MQTT_PORT: '0',
    VIGIL_DATA_DIR: dataDir,
    VIGIL_ADMIN_TOKEN: adminToken,
    LOG_LEVEL: 'info',
    // Thousands of connections from 127.0.0.1, many with bad credentials: the per-address
    // connect rate and lockout would refuse the rest before their packets were read.
    MQTT_CONNECT_RATE_PER_ADDRESS: '0',
    MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: '0',
    // Load shedding off: a busy machine must not fail tests with 503.
    API_MAX_EVENT_LOOP_DELAY_MS: '0',
    // One thread per pool, as in helpers/vigil.ts.
    WORKER_THREADS: '1',
    VIGIL_PASSWORD_SCRYPT_LOG2_N: '14',
    ...(database === null ? {} : { DATABASE_URL: database.url }),
    ...options.env
  })
  if (database === null) await seedEmbeddedDatabase(dataDir)
  let vigil: Vigil
  try {
    vigil = await startVigil(config, createLogger(config.logLevel, logs.stream))
  } catch (err) {
    await database?.drop()
    throw err
  }
  const base = `http://127.0.0.1:${vigil.httpPort}`

  // The API sheds load (503) while the event loop is saturated, as it is right after a fuzz
  // run in this same process, and rate-limits (429): a client waits and asks again.
  async function api<T> (method: string, route: string, body?: unknown): Promise<{ status: number, body: T }> {
    const deadline = Date.now() + 30_000
    for (;;) {
      const res = await fetch(base + route, {
        method,
        headers: { authorization: `Bearer ${adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body)
      })
      const text = await res.text()
      const json = (res.headers.get('content-type') ?? '').includes('json')
      if ((res.status === 503 || res.status === 429) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 250))
        continue
      }
      return { status: res.status, body: (text === '' ? undefined : json ? JSON.parse(text) : text) as T }
    }
  }

  async function must<T> (method: string, route: string, body?: unknown): Promise<T> {
    const res = await api<T>(method, route, body)
    if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
    return res.body
  }

  let macCounter = Math.floor(Math.random() * 0xffff) * 0x10000
  return {
    ...vigil,
    logs,
    api,
    async metrics () {
      const res = await api<string>('GET', '/metrics')
      if (res.status !== 200) throw new Error(`GET /metrics → ${res.status}`)
      return parseMetrics(res.body)
    },
    async provision (assignedFrom = Date.now() - 3_600_000) {
      const patient = await must<{ id: string }>('POST', '/v1/patients', { displayName: 'Fuzz Patient' })
      macCounter++
      const mac = `02:00:${macCounter.toString(16).padStart(8, '0').replace(/(..)(?!$)/g, '$1:')}`
      const device = await must<{ id: string }>('POST', '/v1/devices', {
        name: 'Fuzzed device', mac, firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2026-01-01T00:00:00Z'
      })
      await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom: new Date(assignedFrom).toISOString() })
      const credential = await must<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
      return { patientId: patient.id, deviceId: device.id, password: credential.password, assignedFrom }
    },
    async close () {
      try {
        await vigil.close()
      } finally {
        await database?.drop()
        if (options.dataDir === undefined) await fs.rm(dataDir, { recursive: true, force: true })
      }
    }
  }
}

/** Every page of a `{items, nextCursor}` list route. */
export async function listAll<T> (vigil: Pick<CapturedVigil, 'api'>, route: string): Promise<T[]> {
  const items: T[] = []
  let cursor: string | null = null
  do {
    const separator = route.includes('?') ? '&' : '?'
    const query: string = `${separator}limit=1000${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`
    const res: { status: number, body: { items: T[], nextCursor: string | null } } = await vigil.api('GET', route + query)
    if (res.status !== 200) throw new Error(`GET ${route} → ${res.status} ${JSON.stringify(res.body)}`)
    items.push(...res.body.items)
    cursor = res.body.nextCursor
  } while (cursor !== null)
  return items
}
