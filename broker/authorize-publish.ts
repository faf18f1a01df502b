import type { Client, PublishPacket } from 'aedes'
import type { Ingest, TopicKind } from '../ingest/ingest.ts'
import type { LogThrottle } from '../observability/log-throttle.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { BrokerPresenceHooks } from './options.ts'
import type { RefusalReason } from './refusal-reasons.ts'
import { Refusal, type DeviceSessions, type Refuse } from './shared.ts'

// What a device may publish (its own telemetry, senml and status topics, never retained) and
// the durable-before-PUBACK hook: Aedes 1.2 writes the QoS 1 PUBACK right after
// authorizePublish calls back, so ingest runs here.

const PUBLISH_TOPIC = /^devices\/([0-9a-f-]{36})\/(telemetry|senml|status)$/

/** What a log line needs of a storage error: no stack (the cause is the same for every publish). */
function errorSummary (err: Error): { error: string, code?: string } {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? { error: err.message, code } : { error: err.message }
}

export interface AuthorizePublishContext {
  deviceSessions: DeviceSessions
  refusedClients: WeakSet<Client>
  /** Errors handed to Aedes after being counted (ingest failures): Aedes reports them back. */
  countedErrors: WeakSet<Error>
  refuse: Refuse
  metrics: Metrics
  /** A full disk or a store outage refuses every publish for one cause: one line per reason per interval with a count. */
  storeRefusals: LogThrottle
  ingest: Ingest
  /** Without it the status topic is refused. */
  presence: BrokerPresenceHooks | null | undefined
  diskLow: (() => boolean) | undefined
}

/** Aedes' authorizePublish. */
export function authorizePublish (ctx: AuthorizePublishContext, client: Client | null, packet: PublishPacket, done: (error?: Error | null) => void): void {
  const refused = (reason: RefusalReason, message: string, deviceId?: string): void => {
    ctx.refuse(reason, { deviceId })
    done(new Refusal(reason, message))
  }
  // Aedes passes no client only for Wills left by a broker instance that died (clustering):
  // no session vouches for them, so they are refused like any unauthenticated publish.
  if (client === null) return refused('publisher_unknown', 'publisher unknown')
  const session = ctx.deviceSessions.get(client)
  // Also keeps $SYS/ read-only: no device topic starts with it.
  const match = PUBLISH_TOPIC.exec(packet.topic)
  if (session === undefined || match === null || match[1] !== session.deviceId) {
    ctx.refusedClients.add(client)
    return refused('topic_not_allowed', 'topic not allowed', session?.deviceId)
  }
  if (packet.retain) {
    ctx.refusedClients.add(client)
    return refused('retain_not_allowed', 'retained messages are not allowed', session.deviceId)
  }
  // Before anything is written: PGlite hangs rather than fails on a full disk, so the
  // device keeps the message and resends once there is room again.
  if (ctx.diskLow?.() === true) {
    ctx.refusedClients.add(client)
    return refused('disk_low', 'server storage is low, retry later', session.deviceId)
  }
  const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload)
  if (match[2] === 'status') {
    if (ctx.presence == null) {
      ctx.refusedClients.add(client)
      return refused('topic_not_allowed', 'topic not allowed', session.deviceId)
    }
    ctx.presence.status(session.deviceId, packet.topic, payload).then(() => done(null), (err: Error) => {
      ctx.metrics.mqttRefused.inc({ reason: 'store_unavailable' })
      ctx.storeRefusals.log('error', 'status:store_unavailable', { deviceId: session.deviceId, reason: 'store_unavailable', ...errorSummary(err) },
        'status not made durable: closing connection without PUBACK')
      ctx.countedErrors.add(err)
      ctx.refusedClients.add(client)
      done(err)
    })
    return
  }
  ctx.ingest.accept(session.deviceId, match[2] as TopicKind, packet.topic, payload).then(() => done(null), (err: Error) => {
    const reason = err.name === 'SpoolFullError' ? 'spool_full' : 'store_unavailable'
    ctx.metrics.mqttRefused.inc({ reason })
    ctx.storeRefusals.log('error', reason, { deviceId: session.deviceId, reason, ...errorSummary(err) },
      'reading not made durable: closing connection without PUBACK')
    ctx.countedErrors.add(err)
    ctx.refusedClients.add(client)
    done(err)
  })
}
