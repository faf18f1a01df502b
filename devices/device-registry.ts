import { randomUUID, timingSafeEqual } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type pg from 'pg'
import { hashSecret, newSecret, sha256, verifySecret } from '../crypto/secrets.ts'
import { inTransaction as runInTransaction } from '../store/database.ts'

export interface Device {
  id: string
  name: string
  mac: string
  ownerUserId: string | null
  assignedByUserId: string | null
  firmwareVersion: string
  softwareVersion: string
  startedAt: string
  createdAt: string
  updatedAt: string
  /** Current assignment, if any. */
  patientId: string | null
  /** What the broker knows (device_presence, kept by alerts/lifecycle/presence.ts); all null/false before the device's first connect. */
  presence: DevicePresenceView
}

export interface DevicePresenceView {
  connected: boolean
  /** When it last connected or disconnected. */
  since: string | null
  lastReadingAt: string | null
  batteryPercent: number | null
  lastStatusAt: string | null
}

export interface DeviceVersion { firmwareVersion: string, softwareVersion: string, changedAt: string }

export interface Assignment { patientId: string, validFrom: string, validTo: string | null }

export interface NewDevice {
  name: string
  mac: string
  firmwareVersion: string
  softwareVersion: string
  startedAt: string
  ownerUserId?: string | null
}

export interface DevicePatch {
  name?: string
  firmwareVersion?: string
  softwareVersion?: string
  ownerUserId?: string | null
}

export class DuplicateMacError extends Error {
  constructor (readonly mac: string) { super(`a device with MAC ${mac} is already registered`) }
}
export class UnknownDeviceError extends Error {
  constructor () { super('no device with this id') }
}
export class UnknownPatientError extends Error {
  constructor () { super('no patient with this id') }
}
/** The device's assignment changed between the caller's access check and its change. */
export class AssignmentChangedError extends Error {
  constructor () { super('the device\'s assignment changed meanwhile: read it again and retry') }
}
export class NoCurrentAssignmentError extends Error {
  constructor () { super('the device has no current assignment') }
}
export class AssignmentOrderError extends Error {
  constructor (readonly notBefore: string, what = "the current assignment's start") {
    super(`validFrom must be after ${what} (${notBefore}): assignment periods of a device never overlap`)
  }
}

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
interface VerifiedSecret { credentialId: string, digest: Buffer }

const ASSIGNMENT_CACHE_MS = 30_000

/**
 * Devices, their assignment history and their MQTT credentials. Owns two in-process caches that
 * sit on the ingest hot path: assignment periods per device, and the digest of the last secret
 * that passed scrypt per device (so a reconnecting device skips scrypt).
 * Emits `credentials-revoked` (deviceId) when a device's sessions must end.
 */
export interface DeviceRegistryOptions {
  /** How long before a device's first assignment a reading still belongs to it (ms); default 0. */
  earlyReadingToleranceMs?: number
}

export function createDeviceRegistry (pool: pg.Pool, options: DeviceRegistryOptions = {}) {
  const earlyToleranceMs = options.earlyReadingToleranceMs ?? 0
  const events = new EventEmitter()
  const periods = new Map<string, { expiresAt: number, periods: Period[] }>()
  const verified = new Map<string, VerifiedSecret>()

  const columns = `d.id, d.name, d.mac, d.owner_user_id, d.assigned_by_user_id, d.firmware_version, d.software_version,
    d.started_at, d.created_at, d.updated_at, a.patient_id,
    p.connected AS presence_connected, p.changed_at AS presence_since, p.last_reading_at, p.battery_percent, p.last_status_at`
  const fromDevices = `devices d LEFT JOIN device_assignments a ON a.device_id = d.id AND a.valid_to IS NULL
    LEFT JOIN device_presence p ON p.device_id = d.id`

  const iso = (v: unknown): string | null => v instanceof Date ? v.toISOString() : null

  function toDevice (row: Record<string, unknown>): Device {
    return {
      id: row.id as string,
      name: row.name as string,
      mac: row.mac as string,
      ownerUserId: row.owner_user_id as string | null,
      assignedByUserId: row.assigned_by_user_id as string | null,
      firmwareVersion: row.firmware_version as string,
      softwareVersion: row.software_version as string,
      startedAt: (row.started_at as Date).toISOString(),
      createdAt: (row.created_at as Date).toISOString(),
      updatedAt: (row.updated_at as Date).toISOString(),
      patientId: row.patient_id as string | null,
      presence: {
        connected: row.presence_connected === true,
        since: iso(row.presence_since),
        lastReadingAt: iso(row.last_reading_at),
        batteryPercent: row.battery_percent === null || row.battery_percent === undefined ? null : Number(row.battery_percent),
        lastStatusAt: iso(row.last_status_at)
      }
    }
  }

  async function get (id: string): Promise<Device | null> {
    const { rows } = await pool.query(`SELECT ${columns} FROM ${fromDevices} WHERE d.id = $1`, [id])
    return rows[0] === undefined ? null : toDevice(rows[0])
  }

  const inTransaction = async <T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> => await runInTransaction(pool, work)

  // Bumped on every invalidation: a load that started before an assignment committed must not
  // put its stale snapshot into the cache after the invalidation.
  let generation = 0
  function invalidate (deviceId: string): void {
    generation++
    periods.delete(deviceId)
  }

  // Devices whose expired snapshot is being reloaded in the background.
  const refreshing = new Set<string>()

  async function loadPeriods (deviceId: string): Promise<Period[]> {
    const cached = periods.get(deviceId)
    if (cached !== undefined) {
      if (Date.now() < cached.expiresAt) return cached.periods
      // Expired: serve it and reload behind. Every change made through this registry
      // invalidates at once (the next read waits for the database), so an expired snapshot
      // only misses edits made elsewhere, which the refresh picks up. Publishers never wait for
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
    if (generation === startedAt) periods.set(deviceId, { expiresAt: Date.now() + ASSIGNMENT_CACHE_MS * (0.75 + Math.random() * 0.25), periods: loaded })
    return loaded
  }

  return {
    events,

    async create (input: NewDevice, actor: string | null): Promise<Device> {
      const id = randomUUID()
      try {
        await inTransaction(async (client) => {
          await client.query(
            `INSERT INTO devices (id, name, mac, owner_user_id, firmware_version, software_version, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)`,
            [id, input.name, input.mac, input.ownerUserId ?? null, input.firmwareVersion, input.softwareVersion, input.startedAt])
          await client.query(
            'INSERT INTO device_versions (device_id, firmware_version, software_version, changed_by) VALUES ($1, $2, $3, $4)',
            [id, input.firmwareVersion, input.softwareVersion, actor])
        })
      } catch (err) {
        if ((err as { code?: string }).code === '23505') throw new DuplicateMacError(input.mac)
        throw err
      }
      return (await get(id))!
    },

    get,

    async list (options: { limit: number, afterId?: string }): Promise<Device[]> {
      const { rows } = await pool.query(
        `SELECT ${columns} FROM ${fromDevices} WHERE ($1::uuid IS NULL OR d.id > $1::uuid) ORDER BY d.id LIMIT $2`,
        [options.afterId ?? null, options.limit])
      return rows.map(toDevice)
    },

    /** The devices currently assigned to any of these patients (the worklist's device column). */
    async currentForPatients (patientIds: readonly string[]): Promise<Device[]> {
      if (patientIds.length === 0) return []
      const { rows } = await pool.query(
        `SELECT ${columns} FROM ${fromDevices} WHERE a.patient_id = ANY($1::uuid[]) ORDER BY d.id`, [[...patientIds]])
      return rows.map(toDevice)
    },

    async update (id: string, patch: DevicePatch, actor: string | null): Promise<Device> {
      await inTransaction(async (client) => {
        const { rows } = await client.query('SELECT firmware_version, software_version FROM devices WHERE id = $1 FOR UPDATE', [id])
        const current = rows[0]
        if (current === undefined) throw new UnknownDeviceError()
        await client.query(
          `UPDATE devices SET name = COALESCE($2, name), firmware_version = COALESCE($3, firmware_version),
             software_version = COALESCE($4, software_version),
             owner_user_id = CASE WHEN $5 THEN $6::uuid ELSE owner_user_id END, updated_at = now()
           WHERE id = $1`,
          [id, patch.name ?? null, patch.firmwareVersion ?? null, patch.softwareVersion ?? null,
            patch.ownerUserId !== undefined, patch.ownerUserId ?? null])
        const firmware = patch.firmwareVersion ?? current.firmware_version
        const software = patch.softwareVersion ?? current.software_version
        if (firmware !== current.firmware_version || software !== current.software_version) {
          await client.query(
            'INSERT INTO device_versions (device_id, firmware_version, software_version, changed_by) VALUES ($1, $2, $3, $4)',
            [id, firmware, software, actor])
        }
      })
      return (await get(id))!
    },

    async versions (id: string): Promise<DeviceVersion[]> {
      const { rows } = await pool.query(
        'SELECT firmware_version, software_version, changed_at FROM device_versions WHERE device_id = $1 ORDER BY changed_at, id',
        [id])
      return rows.map((r) => ({
        firmwareVersion: r.firmware_version, softwareVersion: r.software_version, changedAt: (r.changed_at as Date).toISOString()
      }))
    },

    /**
     * Ends the current assignment at validFrom and opens a new one. With `expectedCurrent`
     * (a patient id, or null for none), refuses with AssignmentChangedError when the current
     * assignment is no longer that: the caller's access check was made against it.
     */
    async assign (deviceId: string, patientId: string, validFrom: Date, actor: string | null, expectedCurrent?: string | null): Promise<Assignment> {
      try {
        await inTransaction(async (client) => {
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
        invalidate(deviceId)
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
        return await inTransaction(async (client) => {
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
        invalidate(deviceId)
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
      invalidate(deviceId)
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

    /** Issues a new MQTT secret, revoking the previous one (whose live sessions are ended). */
    async rotateCredential (deviceId: string): Promise<{ username: string, password: string }> {
      const password = newSecret('vgl')
      const hash = await hashSecret(password)
      const revoked = await inTransaction(async (client) => {
        const device = await client.query('SELECT id FROM devices WHERE id = $1 FOR UPDATE', [deviceId])
        if (device.rowCount === 0) throw new UnknownDeviceError()
        const r = await client.query(
          'UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
        await client.query('INSERT INTO device_credentials (id, device_id, secret_hash) VALUES ($1, $2, $3)',
          [randomUUID(), deviceId, hash])
        return (r.rowCount ?? 0) > 0
      })
      verified.delete(deviceId)
      if (revoked) events.emit('credentials-revoked', deviceId)
      return { username: deviceId, password }
    },

    /** Revokes the device's credential; returns false when it had none. */
    async revokeCredential (deviceId: string): Promise<boolean> {
      const r = await pool.query(
        'UPDATE device_credentials SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
      verified.delete(deviceId)
      const revoked = (r.rowCount ?? 0) > 0
      if (revoked) events.emit('credentials-revoked', deviceId)
      return revoked
    },

    /** Checks an MQTT username/password. Returns the credential id, or null. */
    async authenticate (deviceId: string, password: string): Promise<string | null> {
      const digest = sha256(password)
      const known = verified.get(deviceId)
      if (known !== undefined && timingSafeEqual(known.digest, digest)) {
        // Revocation clears the cache, but a revocation done by another instance would not:
        // confirm the credential is still active (one indexed lookup, no scrypt). With Postgres
        // unreachable no revocation can happen either, so the verified secret stands and the
        // device can reconnect through a database outage.
        const still = await pool.query('SELECT 1 FROM device_credentials WHERE id = $1 AND revoked_at IS NULL', [known.credentialId])
          .catch(() => null)
        if (still === null || still.rowCount === 1) return known.credentialId
        verified.delete(deviceId)
        return null
      }
      const { rows } = await pool.query(
        'SELECT id, secret_hash FROM device_credentials WHERE device_id = $1 AND revoked_at IS NULL', [deviceId])
      const row = rows[0]
      if (row === undefined) return null
      if (!(await verifySecret(password, row.secret_hash))) return null
      verified.set(deviceId, { credentialId: row.id, digest })
      return row.id as string
    },

    /** Whether a credential is still active (for sessions to re-check). */
    async isCredentialActive (credentialId: string): Promise<boolean> {
      const r = await pool.query('SELECT 1 FROM device_credentials WHERE id = $1 AND revoked_at IS NULL', [credentialId])
      return r.rowCount === 1
    }
  }
}

export type DeviceRegistry = ReturnType<typeof createDeviceRegistry>
