import type { Duplex } from 'node:stream'
import type { Client } from 'aedes'
import type { Logger } from 'pino'
import type { Metrics } from '../observability/metrics.ts'
import type { Transport } from './listeners.ts'
import type { RefusalReason } from './refusal-reasons.ts'

// What the broker's hooks share: topic and id shapes, the per-connection state more than one
// hook reads, and the refusal (counted and logged once).

// Device ids are UUIDs (devices/device-registry.ts). Checked before any lookup so a hostile
// client id never reaches SQL, a topic comparison or a map key.
export const DEVICE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
export const ALERT_TOPIC = /^alerts\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/
export const USER_ALERT_TOPIC = /^users\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/alerts$/

export interface ConnectionInfo {
  transport: Transport
  /** The address limits are kept by (see addressKey). */
  remoteAddress: string | undefined
  certificateCommonName?: string | string[]
  /** When the connection was handed to Aedes (ms): the connect timeout runs from here to the CONNACK. */
  acceptedAt: number
}

/** What the transport established, keyed by the stream Aedes reads (client.conn). */
export type Connections = WeakMap<Duplex, ConnectionInfo>

export function connectionOf (connections: Connections, client: Client): ConnectionInfo | undefined {
  return connections.get(client.conn as Duplex)
}

/** The credential a device session authenticated with. */
export interface DeviceSession { deviceId: string, credentialId: string }

/** Device sessions by client; WeakMap so closed clients leave nothing behind. */
export type DeviceSessions = WeakMap<Client, DeviceSession>

/** A refusal already counted and logged: Aedes reports it again as a client error. */
export class Refusal extends Error {
  constructor (readonly reason: RefusalReason, message: string, readonly returnCode?: 2 | 3 | 4 | 5) {
    super(message)
    this.name = 'Refusal'
  }
}

/** Counts a refusal (vigil_mqtt_refused_total) and logs it. */
export type Refuse = (reason: RefusalReason, fields: Record<string, unknown>, level?: 'error' | 'warn' | 'debug') => void

export function createRefuse (metrics: Metrics, log: Logger): Refuse {
  return (reason, fields, level = 'warn') => {
    metrics.mqttRefused.inc({ reason })
    log[level]({ ...fields, reason }, 'mqtt refused')
  }
}
