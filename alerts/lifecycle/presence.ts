import { Type, type Static } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { StoredReading } from '../../readings/reading.ts'
import type { Metrics } from '../../observability/metrics.ts'
import type { RejectionLog } from '../../devices/rejections.ts'
import type { ConditionChange, ConditionSink, DevicePresence } from '../contract.ts'
import type { Schedule, ScheduledJob } from './escalation.ts'

/** devices/{id}/status: what a device may report about itself. Other fields are ignored. */
export const DeviceStatus = Type.Object({
  battery: Type.Optional(Type.Number({ minimum: 0, maximum: 100, description: 'Battery charge, percent' })),
  ts: Type.Optional(Type.Integer({ minimum: 0, description: "Device clock, ms since epoch (informational)" }))
}, { additionalProperties: true })
export type DeviceStatus = Static<typeof DeviceStatus>

const validateStatus = new Ajv({ allErrors: false, strict: false }).compile(DeviceStatus)

// Status payloads are a few dozen bytes; anything larger is not a status report.
const MAX_STATUS_BYTES = 1024

export interface PresenceDeps {
  pool: pg.Pool
  rejections: RejectionLog
  metrics: Metrics
  log: Logger
  now?: () => number
}

/**
 * Device presence for no-data causes: connect/disconnect from the broker, battery from
 * devices/{id}/status, and the last accepted reading. Connects, disconnects and status reports
 * are written through (rare); reading times are kept in memory and written every `flush()`
 * (the no-data check calls it first), so the publish path never waits on this table.
 */
export function createPresence (deps: PresenceDeps) {
  const log = deps.log.child({ component: 'presence' })
  const now = deps.now ?? Date.now
  const lastReading = new Map<string, number>()
  // Keeps connect/disconnect writes of one device in arrival order.
  let chain: Promise<void> = Promise.resolve()

  function serial (work: () => Promise<unknown>): Promise<void> {
    const next = chain.then(work).then(() => {}, (err: Error) => log.error({ err }, 'presence not recorded'))
    chain = next
    return next
  }

  async function upsert (deviceId: string, set: Record<string, unknown>): Promise<void> {
    const columns = Object.keys(set)
    await deps.pool.query(
      `INSERT INTO device_presence (device_id, ${columns.join(', ')})
       SELECT $1, ${columns.map((_, i) => `$${i + 2}`).join(', ')} WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
       ON CONFLICT (device_id) DO UPDATE SET ${columns.map((c) => `${c} = EXCLUDED.${c}`).join(', ')}`,
      [deviceId, ...columns.map((c) => set[c])])
  }

  return {
    /** Broker clientReady for a device session. */
    connected (deviceId: string): Promise<void> {
      const at = new Date(now())
      return serial(() => upsert(deviceId, { connected: true, changed_at: at }))
    },
    /** Broker clientDisconnect for a device session. */
    disconnected (deviceId: string): Promise<void> {
      const at = new Date(now())
      return serial(() => upsert(deviceId, { connected: false, changed_at: at }))
    },
    /** Ingest's onAccepted: remembers the receive time of each device's latest reading. */
    readingsAccepted (readings: readonly StoredReading[]): void {
      const at = now()
      for (const r of readings) lastReading.set(r.deviceId, at)
    },
    /**
     * A devices/{id}/status publish, before its PUBACK: stored, or recorded as a rejection
     * (reason status_invalid) like any refused payload. Resolves once durable.
     */
    async status (deviceId: string, topic: string, payload: Buffer): Promise<'accepted' | 'rejected'> {
      let status: unknown
      let problem: string | null = null
      if (payload.length > MAX_STATUS_BYTES) problem = `status payload is larger than ${MAX_STATUS_BYTES} bytes`
      else {
        try {
          status = JSON.parse(payload.toString('utf8'))
          if (!validateStatus(status)) {
            const e = validateStatus.errors?.[0]
            problem = `status${e?.instancePath ?? ''} ${e?.message ?? 'is invalid'}`
          }
        } catch {
          problem = 'status payload is not JSON'
        }
      }
      if (problem !== null) {
        await deps.rejections.record(deviceId, topic, 'status_invalid', problem, payload)
        deps.metrics.rejections.inc({ reason: 'status_invalid' })
        log.info({ deviceId, reason: 'status_invalid' }, 'status rejected')
        return 'rejected'
      }
      const battery = (status as DeviceStatus).battery
      await serial(() => upsert(deviceId, battery === undefined
        ? { last_status_at: new Date(now()) }
        : { battery_percent: battery, last_status_at: new Date(now()) }))
      return 'accepted'
    },
    /** Writes the remembered reading times. */
    async flush (): Promise<void> {
      if (lastReading.size === 0) return
      const entries = [...lastReading]
      lastReading.clear()
      await serial(() => deps.pool.query(
        `INSERT INTO device_presence (device_id, last_reading_at)
         SELECT d.id, to_timestamp(x.at / 1000.0) FROM unnest($1::uuid[], $2::float8[]) AS x(id, at) JOIN devices d ON d.id = x.id
         ON CONFLICT (device_id) DO UPDATE SET last_reading_at = GREATEST(device_presence.last_reading_at, EXCLUDED.last_reading_at)`,
        [entries.map((e) => e[0]), entries.map((e) => e[1])]))
    },
    /** Every device assigned to a patient now, with what Vigil knows of it (never-seen devices too). */
    async presence (): Promise<DevicePresence[]> {
      await this.flush()
      await chain
      const { rows } = await deps.pool.query(
        `SELECT d.id, a.patient_id, p.connected, p.changed_at, p.last_reading_at, p.battery_percent, p.last_status_at
         FROM devices d
         LEFT JOIN device_assignments a ON a.device_id = d.id AND a.valid_to IS NULL
         LEFT JOIN device_presence p ON p.device_id = d.id
         ORDER BY d.id`)
      const ms = (d: Date | null): number | null => d === null ? null : d.getTime()
      return rows.map((r) => ({
        deviceId: r.id,
        patientId: r.patient_id,
        connected: r.connected === true,
        changedAt: ms(r.changed_at),
        lastReadingAt: ms(r.last_reading_at),
        batteryPercent: r.battery_percent,
        lastStatusAt: ms(r.last_status_at)
      }))
    },
    async close (): Promise<void> {
      await this.flush().catch((err: Error) => log.error({ err }, 'presence flush at close failed'))
      await chain
    }
  }
}

export type Presence = ReturnType<typeof createPresence>

export type NoDataCause = 'disconnected' | 'never_connected' | 'connected_silent' | 'low_battery'

/**
 * Why a device that should be sending is silent, as far as Vigil knows: the engine's
 * evaluateNoData can put this in ConditionChange.details (cause, since). Low battery wins
 * over the connection state: it explains a disconnect too.
 */
export function noDataCause (p: DevicePresence, lowBatteryPercent = 15): { cause: NoDataCause, since: number | null } {
  if (p.batteryPercent !== null && p.batteryPercent <= lowBatteryPercent) return { cause: 'low_battery', since: p.lastStatusAt }
  if (p.changedAt === null) return { cause: 'never_connected', since: null }
  if (!p.connected) return { cause: 'disconnected', since: p.changedAt }
  return { cause: 'connected_silent', since: p.lastReadingAt ?? p.changedAt }
}

export interface NoDataDeps {
  presence: Presence
  /** The engine's no-data evaluation (evaluateNoData with the current rules bound). */
  evaluate: (presence: DevicePresence[], now: number) => ConditionChange[] | Promise<ConditionChange[]>
  sink: ConditionSink
  log: Logger
  now?: () => number
  /** node-cron's schedule; absent: only tick(). */
  schedule?: Schedule
}

/** Every 30 s: no-data windows are minutes long. */
export const NO_DATA_CRON = '*/30 * * * * *'

/** The no-data check on a schedule: presence → engine → sink. tick() runs one pass (tests). */
export function startNoDataChecks (deps: NoDataDeps) {
  const log = deps.log.child({ component: 'no-data' })
  const now = deps.now ?? Date.now
  let running: Promise<number> | null = null

  function tick (): Promise<number> {
    running ??= (async () => {
      const changes = await deps.evaluate(await deps.presence.presence(), now())
      if (changes.length > 0) await deps.sink.apply(changes)
      return changes.length
    })().finally(() => { running = null })
    return running
  }

  const job: ScheduledJob | undefined = deps.schedule?.(NO_DATA_CRON, async () => {
    await tick().catch((err: Error) => log.error({ err }, 'no-data check failed'))
  })
  return {
    tick,
    async close (): Promise<void> {
      await job?.stop()
      await running?.catch(() => {})
    }
  }
}
