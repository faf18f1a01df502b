import { EventEmitter } from 'node:events'
import type pg from 'pg'
import { createDeviceAssignments } from './device-assignments.ts'
import { createDeviceCredentials } from './device-credentials.ts'
import { createDeviceRecords } from './device-records.ts'

export type { Assignment } from './device-assignments.ts'
export type { Device, DevicePatch, DevicePresenceView, DeviceVersion, NewDevice } from './device-records.ts'
export { AssignmentChangedError, AssignmentOrderError, DuplicateMacError, NoCurrentAssignmentError, UnknownDeviceError, UnknownPatientError } from './device-errors.ts'

/** A change other processes' caches must hear of (clustering: cluster/ carries it). */
export interface DeviceChange {
  kind: 'credential-revoked' | 'assignment-changed'
  deviceId: string
}

export interface DeviceRegistryOptions {
  /** How long before a device's first assignment a reading still belongs to it (ms); default 0. */
  earlyReadingToleranceMs?: number
  /**
   * Several processes: tells the others of a change made here (awaited before the change's
   * caller is answered, so their next reading sees it). Without it: one process.
   */
  announce?: (change: DeviceChange) => Promise<unknown>
  /**
   * Several processes: false while changes made elsewhere may go unannounced (Redis down):
   * cached assignments are then read again from Postgres for every message.
   */
  cacheTrusted?: () => boolean
}

/**
 * Devices, their assignment history and their MQTT credentials: one handle over three parts,
 * registration and queries (device-records.ts), assignments (device-assignments.ts) and
 * credentials (device-credentials.ts). Owns two in-process caches that sit on the ingest hot
 * path: assignment periods per device, and the digest of the last secret that passed scrypt
 * per device (so a reconnecting device skips scrypt).
 * Emits `credentials-revoked` (deviceId) when a device's sessions must end, here or (with
 * `announce` and `applyChange`) in another process.
 */
export function createDeviceRegistry (pool: pg.Pool, options: DeviceRegistryOptions = {}) {
  const events = new EventEmitter()
  const announce = options.announce ?? (async () => {})
  const assignments = createDeviceAssignments(pool, options.earlyReadingToleranceMs ?? 0, {
    changed: async (deviceId) => { await announce({ kind: 'assignment-changed', deviceId }) },
    trusted: options.cacheTrusted ?? (() => true)
  })
  const credentials = createDeviceCredentials(pool, events, async (deviceId) => { await announce({ kind: 'credential-revoked', deviceId }) })
  return {
    events,
    ...createDeviceRecords(pool),
    ...assignments,
    ...credentials,
    /** A change another process made (its announce): drop what this process cached, end revoked sessions. */
    applyChange (change: DeviceChange): void {
      if (change.kind === 'assignment-changed') assignments.forgetAssignments(change.deviceId)
      else credentials.credentialRevokedElsewhere(change.deviceId)
    },
    /** After changes may have been missed (Redis was down): drop every cached assignment and verified secret. */
    forgetCached (): void {
      assignments.forgetAssignments()
      credentials.forgetVerified()
    }
  }
}

export type DeviceRegistry = ReturnType<typeof createDeviceRegistry>
