import { EventEmitter } from 'node:events'
import type pg from 'pg'
import { createDeviceAssignments } from './device-assignments.ts'
import { createDeviceCredentials } from './device-credentials.ts'
import { createDeviceRecords } from './device-records.ts'

export type { Assignment } from './device-assignments.ts'
export type { Device, DevicePatch, DevicePresenceView, DeviceVersion, NewDevice } from './device-records.ts'
export { AssignmentChangedError, AssignmentOrderError, DuplicateMacError, NoCurrentAssignmentError, UnknownDeviceError, UnknownPatientError } from './device-errors.ts'

export interface DeviceRegistryOptions {
  /** How long before a device's first assignment a reading still belongs to it (ms); default 0. */
  earlyReadingToleranceMs?: number
}

/**
 * Devices, their assignment history and their MQTT credentials: one handle over three parts,
 * registration and queries (device-records.ts), assignments (device-assignments.ts) and
 * credentials (device-credentials.ts). Owns two in-process caches that sit on the ingest hot
 * path: assignment periods per device, and the digest of the last secret that passed scrypt
 * per device (so a reconnecting device skips scrypt).
 * Emits `credentials-revoked` (deviceId) when a device's sessions must end.
 */
export function createDeviceRegistry (pool: pg.Pool, options: DeviceRegistryOptions = {}) {
  const events = new EventEmitter()
  return {
    events,
    ...createDeviceRecords(pool),
    ...createDeviceAssignments(pool, options.earlyReadingToleranceMs ?? 0),
    ...createDeviceCredentials(pool, events)
  }
}

export type DeviceRegistry = ReturnType<typeof createDeviceRegistry>
