import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { inTransaction } from '../store/database.ts'
import { DuplicateMacError, UnknownDeviceError } from './device-errors.ts'

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

/** Registration and the device rows: register, read, list, change, and the version history. */
export function createDeviceRecords (pool: pg.Pool) {
  async function get (id: string): Promise<Device | null> {
    const { rows } = await pool.query(`SELECT ${columns} FROM ${fromDevices} WHERE d.id = $1`, [id])
    return rows[0] === undefined ? null : toDevice(rows[0])
  }

  return {
    async create (input: NewDevice, actor: string | null): Promise<Device> {
      const id = randomUUID()
      try {
        await inTransaction(pool, async (client) => {
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

    /** The devices currently assigned to any of these patients (the worklist's device column). */
    async currentForPatients (patientIds: readonly string[]): Promise<Device[]> {
      if (patientIds.length === 0) return []
      const { rows } = await pool.query(
        `SELECT ${columns} FROM ${fromDevices} WHERE a.patient_id = ANY($1::uuid[]) ORDER BY d.id`, [[...patientIds]])
      return rows.map(toDevice)
    },

    /** By id; `patientId`: only the devices assigned to this patient now. */
    async list (options: { limit: number, afterId?: string, patientId?: string }): Promise<Device[]> {
      const { rows } = await pool.query(
        `SELECT ${columns} FROM ${fromDevices} WHERE ($1::uuid IS NULL OR d.id > $1::uuid) AND ($3::uuid IS NULL OR a.patient_id = $3::uuid)
          ORDER BY d.id LIMIT $2`,
        [options.afterId ?? null, options.limit, options.patientId ?? null])
      return rows.map(toDevice)
    },

    async update (id: string, patch: DevicePatch, actor: string | null): Promise<Device> {
      await inTransaction(pool, async (client) => {
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
    }
  }
}
