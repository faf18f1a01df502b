import { Type, type Static } from '@fastify/type-provider-typebox'
import { Ajv } from 'ajv'
import type { Logger } from 'pino'
import type { RejectionLog } from '../devices/rejections.ts'
import type { Metrics } from '../observability/metrics.ts'

/** devices/{id}/status: what a device may report about itself. Other fields are ignored. */
export const DeviceStatus = Type.Object({
  battery: Type.Optional(Type.Number({ minimum: 0, maximum: 100, description: 'Battery charge, percent' })),
  ts: Type.Optional(Type.Integer({ minimum: 0, description: 'Device clock, ms since epoch (informational)' }))
}, { additionalProperties: true })
export type DeviceStatus = Static<typeof DeviceStatus>

const validateStatus = new Ajv({ allErrors: false, strict: false }).compile<DeviceStatus>(DeviceStatus)

// Status payloads are a few dozen bytes; anything larger is not a status report.
const MAX_STATUS_BYTES = 1024

/** Decodes a devices/{id}/status payload: the report, or why it is refused (stored as status_invalid). */
export function decodeStatus (payload: Buffer): { ok: true, status: DeviceStatus } | { ok: false, problem: string } {
  if (payload.length > MAX_STATUS_BYTES) return { ok: false, problem: `status payload is larger than ${MAX_STATUS_BYTES} bytes` }
  let status: unknown
  try {
    status = JSON.parse(payload.toString('utf8'))
  } catch {
    return { ok: false, problem: 'status payload is not JSON' }
  }
  if (!validateStatus(status)) {
    const e = validateStatus.errors?.[0]
    return { ok: false, problem: `status${e?.instancePath ?? ''} ${e?.message ?? 'is invalid'}` }
  }
  return { ok: true, status }
}

/** Where device sessions and decoded status reports go (the alert lifecycle's presence). */
export interface PresenceRecorder {
  connected (deviceId: string): unknown
  disconnected (deviceId: string): unknown
  status (deviceId: string, status: DeviceStatus): Promise<unknown>
}

export interface DeviceSessionDeps {
  presence: PresenceRecorder
  rejections: RejectionLog
  metrics: Metrics
  log: Logger
}

/**
 * The broker's presence hooks (BrokerPresenceHooks): connects and disconnects pass through; a
 * status publish is decoded here, before its PUBACK, and either recorded in presence or
 * recorded as a rejection (reason status_invalid) like any refused payload. Resolves once durable.
 */
export function deviceSessionHooks (deps: DeviceSessionDeps) {
  const log = deps.log.child({ component: 'presence' })
  return {
    connected: (deviceId: string) => deps.presence.connected(deviceId),
    disconnected: (deviceId: string) => deps.presence.disconnected(deviceId),
    async status (deviceId: string, topic: string, payload: Buffer): Promise<'accepted' | 'rejected'> {
      const decoded = decodeStatus(payload)
      if (!decoded.ok) {
        await deps.rejections.record(deviceId, topic, 'status_invalid', decoded.problem, payload)
        deps.metrics.rejections.inc({ reason: 'status_invalid' })
        log.info({ deviceId, reason: 'status_invalid' }, 'status rejected')
        return 'rejected'
      }
      await deps.presence.status(deviceId, decoded.status)
      return 'accepted'
    }
  }
}
