import type pg from 'pg'
import type { Logger } from 'pino'
import type { StoredReading } from '../../readings/reading.ts'
import type { DevicePresence, DevicePresenceSource } from '../contract.ts'

/** A devices/{id}/status report, decoded and validated where MQTT payloads are (ingest/decode-status.ts). */
export interface StatusReport {
  /** Battery charge, percent (0–100). */
  battery?: number
}

export interface PresenceDeps {
  pool: pg.Pool
  log: Logger
  now?: () => number
  /** Reading times are written at most this long (ms) after the first one remembered. Default 5,000. */
  flushAfterMs?: number
}

/**
 * Device presence for no-data causes: connect/disconnect from the broker, battery from
 * devices/{id}/status, and the last accepted reading. Connects, disconnects and status reports
 * are written through (rare); reading times are kept in memory and written by `flush()`, so the
 * publish path never waits on this table: within `flushAfterMs` of a reading (the device list
 * and the worklist read the table: they said "no reading yet" beside a reading until the next
 * no-data check), and before the no-data check reads it. No reading, no timer. The engine reads
 * it as its DevicePresenceSource.
 */
export function createPresence (deps: PresenceDeps) {
  const log = deps.log.child({ component: 'presence' })
  const now = deps.now ?? Date.now
  const lastReading = new Map<string, number>()
  const flushAfterMs = deps.flushAfterMs ?? 5000
  let flushTimer: NodeJS.Timeout | null = null
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

  async function flush (): Promise<void> {
    if (flushTimer !== null) clearTimeout(flushTimer)
    flushTimer = null
    if (lastReading.size === 0) return
    const entries = [...lastReading]
    lastReading.clear()
    await serial(() => deps.pool.query(
      `INSERT INTO device_presence (device_id, last_reading_at)
       SELECT d.id, to_timestamp(x.at / 1000.0) FROM unnest($1::uuid[], $2::float8[]) AS x(id, at) JOIN devices d ON d.id = x.id
       ON CONFLICT (device_id) DO UPDATE SET last_reading_at = GREATEST(device_presence.last_reading_at, EXCLUDED.last_reading_at)`,
      [entries.map((e) => e[0]), entries.map((e) => e[1])]))
  }

  return {
    /** Broker clientReady for a device session. */
    connected (deviceId: string): Promise<void> {
      const at = new Date(now())
      return serial(() => upsert(deviceId, { connected: true, changed_at: at }))
    },
    /**
     * At start, before the broker takes connections, for a process that is the only one on its
     * database: no connection outlives its process, so a device still marked connected lost it
     * when the last run ended without its disconnects (a crash, a power cut). Marks them
     * disconnected as of now (the moment it is known) and answers how many.
     */
    async disconnectAll (): Promise<number> {
      const { rowCount } = await deps.pool.query('UPDATE device_presence SET connected = false, changed_at = $1 WHERE connected', [new Date(now())])
      return rowCount ?? 0
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
      if (flushTimer === null && lastReading.size > 0) {
        flushTimer = setTimeout(() => { flush().catch((err: Error) => log.error({ err }, 'presence flush failed')) }, flushAfterMs)
        flushTimer.unref()
      }
    },
    /** A decoded devices/{id}/status report, before its PUBACK: resolves once durable. */
    async status (deviceId: string, report: StatusReport): Promise<void> {
      const at = new Date(now())
      await serial(() => upsert(deviceId, report.battery === undefined
        ? { last_status_at: at }
        : { battery_percent: report.battery, last_status_at: at }))
    },
    /** Writes the remembered reading times. */
    flush,
    /** Every device assigned to a patient now, with what Vigil knows of it (never-seen devices too). */
    async presence (): Promise<DevicePresence[]> {
      await flush()
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
      await flush().catch((err: Error) => log.error({ err }, 'presence flush at close failed'))
      await chain
    }
  }
}

export type Presence = ReturnType<typeof createPresence> & DevicePresenceSource
