import type pg from 'pg'
import { inTransaction } from '../store/database.ts'
import { AssignmentChangedError, AssignmentOrderError, NoCurrentAssignmentError, UnknownDeviceError, UnknownPatientError } from './device-errors.ts'

export interface Assignment { patientId: string, validFrom: string, validTo: string | null }

interface Period { from: number, to: number, patientId: string }

/**
 * The patient assigned at `ts`. A reading up to `earlyToleranceMs` before the device's first
 * assignment belongs to that assignment: no earlier period can claim it, and a device clock
 * a little behind the server's stamps its first readings before the assignment was made.
 */
function patientIn (periods: readonly Period[], ts: number, earlyToleranceMs: number): string | null {
  let first: Period | undefined
  for (const p of periods) {
    if (ts >= p.from && ts < p.to) return p.patientId
    if (first === undefined || p.from < first.from) first = p
  }
  if (first !== undefined && ts < first.from && ts >= first.from - earlyToleranceMs) return first.patientId
  return null
}

const ASSIGNMENT_CACHE_MS = 30_000

/**
 * Which patient a device serves when: its assignment history, changed here, and a cache of
 * its periods per device on the ingest hot path (every change made here invalidates it).
 */
export interface AssignmentCacheHooks {
  /** A change made here: awaited before the change's caller is answered (other processes' caches). */
  changed (deviceId: string): Promise<void>
  /** False while changes made elsewhere may go unannounced: the cache is then read through. */
  trusted (): boolean
}

export function createDeviceAssignments (pool: pg.Pool, earlyToleranceMs: number, hooks: AssignmentCacheHooks = { changed: async () => {}, trusted: () => true }) {
  // `lookup` is made once per load, so the hot path allocates nothing for a cached device.
  const periods = new Map<string, { expiresAt: number, periods: Period[], lookup: (ts: number) => string | null }>()

  // Bumped on every invalidation: a load that started before an assignment committed must not
  // put its stale snapshot into the cache after the invalidation.
  let generation = 0
  function forget (deviceId?: string): void {
    generation++
    if (deviceId === undefined) periods.clear()
    else periods.delete(deviceId)
  }
  async function invalidate (deviceId: string): Promise<void> {
    forget(deviceId)
    await hooks.changed(deviceId)
  }

  // Devices whose expired snapshot is being reloaded in the background.
  const refreshing = new Set<string>()

  async function loadPeriods (deviceId: string): Promise<Period[]> {
    const cached = periods.get(deviceId)
    // Another process's change may have gone unannounced: the snapshot is only a fallback for
    // a Postgres outage.
    if (cached !== undefined && !hooks.trusted()) return await fetchPeriods(deviceId, cached)
    if (cached !== undefined) {
      if (Date.now() < cached.expiresAt) return cached.periods
      // Expired: serve it and reload behind. Every change made through a registry invalidates
      // at once (in every process, when clustered: announce), so an expired snapshot only
      // misses edits made outside Vigil, which the refresh picks up. Publishers never wait for
      // it: when the whole fleet's entries expired together, each publish waited for a query
      // (the p99 PUBACK spike every 30 s in the benchmark).
      if (!refreshing.has(deviceId)) {
        refreshing.add(deviceId)
        fetchPeriods(deviceId, cached).catch(() => {}).finally(() => refreshing.delete(deviceId))
      }
      return cached.periods
    }
    return await fetchPeriods(deviceId, undefined)
  }

  async function fetchPeriods (deviceId: string, cached: { periods: Period[] } | undefined): Promise<Period[]> {
    const startedAt = generation
    let rows: Array<Record<string, unknown>>
    try {
      rows = (await pool.query(
        'SELECT patient_id, valid_from, valid_to FROM device_assignments WHERE device_id = $1 ORDER BY valid_from DESC',
        [deviceId])).rows
    } catch (err) {
      // Postgres unreachable: assignments cannot change without it (the API needs it too), so
      // the last snapshot is still the truth and readings bound for InfluxDB keep flowing.
      if (cached !== undefined) return cached.periods
      throw err
    }
    const loaded = rows.map((r) => ({
      patientId: r.patient_id as string,
      from: (r.valid_from as Date).getTime(),
      to: r.valid_to === null ? Number.POSITIVE_INFINITY : (r.valid_to as Date).getTime()
    }))
    // Expiry spread over 75–100 % of the lifetime so entries loaded
    // together (a fleet reconnecting) do not all expire in the same second.
    if (generation === startedAt) {
      periods.set(deviceId, {
        expiresAt: Date.now() + ASSIGNMENT_CACHE_MS * (0.75 + Math.random() * 0.25),
        periods: loaded,
        lookup: (ts) => patientIn(loaded, ts, earlyToleranceMs)
      })
    }
    return loaded
  }

  return {
    /** Drops the cached periods of one device (a change another process announced) or of all. */
    forgetAssignments: forget,

    /**
     * Ends the current assignment at validFrom and opens a new one. With `expectedCurrent`
     * (a patient id, or null for none), refuses with AssignmentChangedError when the current
     * assignment is no longer that: the caller's access check was made against it.
     */
    async assign (deviceId: string, patientId: string, validFrom: Date, actor: string | null, expectedCurrent?: string | null): Promise<Assignment> {
      try {
        await inTransaction(pool, async (client) => {
          // The device row lock serializes assignments of one device, so periods never overlap.
          const device = await client.query('SELECT id FROM devices WHERE id = $1 FOR UPDATE', [deviceId])
          if (device.rowCount === 0) throw new UnknownDeviceError()
          const patient = await client.query('SELECT id FROM patients WHERE id = $1', [patientId])
          if (patient.rowCount === 0) throw new UnknownPatientError()
          const open = await client.query(
            'SELECT id, valid_from, patient_id FROM device_assignments WHERE device_id = $1 AND valid_to IS NULL', [deviceId])
          const current = open.rows[0]
          if (expectedCurrent !== undefined && (current?.patient_id ?? null) !== expectedCurrent) throw new AssignmentChangedError()
          if (current !== undefined && (current.valid_from as Date).getTime() >= validFrom.getTime()) {
            throw new AssignmentOrderError((current.valid_from as Date).toISOString())
          }
          // A closed period ending after validFrom would overlap the new one: a reading in the
          // overlap would belong to two patients.
          const later = await client.query(
            'SELECT max(valid_to) AS until FROM device_assignments WHERE device_id = $1 AND valid_to > $2', [deviceId, validFrom])
          const until = later.rows[0]?.until as Date | null | undefined
          if (until !== null && until !== undefined) throw new AssignmentOrderError(until.toISOString(), 'the end of an earlier assignment')
          if (current !== undefined) {
            await client.query('UPDATE device_assignments SET valid_to = $2 WHERE id = $1', [current.id, validFrom])
          }
          await client.query(
            'INSERT INTO device_assignments (device_id, patient_id, valid_from, assigned_by) VALUES ($1, $2, $3, $4)',
            [deviceId, patientId, validFrom, actor])
          await client.query('UPDATE devices SET assigned_by_user_id = $2, updated_at = now() WHERE id = $1', [deviceId, actor])
        })
      } finally {
        await invalidate(deviceId)
      }
      return { patientId, validFrom: validFrom.toISOString(), validTo: null }
    },

    /**
     * Corrects the start of the current assignment (a device in use before it was assigned,
     * a clock behind). `expectedPatientId` is the patient the caller was allowed to act for:
     * a reassignment in between makes this a conflict. Refused when the new start would
     * overlap an earlier period of the device (another patient's readings).
     */
    async correctStart (deviceId: string, expectedPatientId: string, validFrom: Date): Promise<Assignment> {
      try {
        return await inTransaction(pool, async (client) => {
          const device = await client.query('SELECT id FROM devices WHERE id = $1 FOR UPDATE', [deviceId])
          if (device.rowCount === 0) throw new UnknownDeviceError()
          const open = await client.query(
            'SELECT id, patient_id FROM device_assignments WHERE device_id = $1 AND valid_to IS NULL', [deviceId])
          const current = open.rows[0]
          if (current === undefined) throw new NoCurrentAssignmentError()
          if (current.patient_id !== expectedPatientId) throw new AssignmentChangedError()
          const earlier = await client.query(
            'SELECT max(valid_to) AS until FROM device_assignments WHERE device_id = $1 AND id <> $2 AND valid_to > $3',
            [deviceId, current.id, validFrom])
          const until = earlier.rows[0]?.until as Date | null | undefined
          if (until !== null && until !== undefined) throw new AssignmentOrderError(until.toISOString(), 'the end of an earlier assignment')
          await client.query('UPDATE device_assignments SET valid_from = $2 WHERE id = $1', [current.id, validFrom])
          return { patientId: current.patient_id as string, validFrom: validFrom.toISOString(), validTo: null }
        })
      } finally {
        await invalidate(deviceId)
      }
    },

    /**
     * Ends the current assignment now; readings after this are rejected as unassigned. With
     * `expectedPatient`, only an assignment to that patient (the one the caller's access was checked against).
     */
    async unassign (deviceId: string, expectedPatient?: string): Promise<boolean> {
      const { rowCount } = await pool.query(
        `UPDATE device_assignments SET valid_to = greatest(now(), valid_from + interval '1 millisecond')
          WHERE device_id = $1 AND valid_to IS NULL AND ($2::uuid IS NULL OR patient_id = $2::uuid)`,
        [deviceId, expectedPatient ?? null])
      await invalidate(deviceId)
      return (rowCount ?? 0) > 0
    },

    async assignments (deviceId: string): Promise<Assignment[]> {
      const { rows } = await pool.query(
        'SELECT patient_id, valid_from, valid_to FROM device_assignments WHERE device_id = $1 ORDER BY valid_from DESC',
        [deviceId])
      return rows.map((r) => ({
        patientId: r.patient_id,
        validFrom: (r.valid_from as Date).toISOString(),
        validTo: r.valid_to === null ? null : (r.valid_to as Date).toISOString()
      }))
    },

    /**
     * A resolver from timestamp to patient for one device, loaded once: a message's readings
     * are resolved against one consistent snapshot of the assignment history, with one await.
     */
    async assignmentsOf (deviceId: string): Promise<(ts: number) => string | null> {
      const loaded = await loadPeriods(deviceId)
      return (ts) => patientIn(loaded, ts, earlyToleranceMs)
    },

    /**
     * assignmentsOf without a promise when the device's periods are cached, fresh and trusted
     * (every publish of a connected device, nearly): null otherwise, and the caller awaits
     * assignmentsOf, which loads or refreshes them. The same answer, one await and two
     * promises fewer a message.
     */
    cachedAssignmentsOf (deviceId: string): ((ts: number) => string | null) | null {
      const cached = periods.get(deviceId)
      if (cached === undefined || Date.now() >= cached.expiresAt || !hooks.trusted()) return null
      return cached.lookup
    }
  }
}
