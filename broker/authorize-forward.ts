import type { AedesPublishPacket, Client } from 'aedes'
import type { PeopleSessions } from './people-sessions.ts'
import { ALERT_TOPIC, USER_ALERT_TOPIC, type DeviceSessions, type Refuse } from './shared.ts'

// Every packet to a subscriber passes here, live ones and those queued for a persistent
// session while it was offline (Aedes' emptyQueue checks nothing else: a refused restored
// subscription does not stop them). Synchronous, so for a person it reads the decisions
// people-sessions.ts keeps: the per-delivery recheck.

/** The type and patient of an alert notification (alerts/lifecycle/alert-store.ts notificationPayload); null when it names none. */
function eventOf (payload: Buffer | string): { type: string, patientId: string } | null {
  try {
    const parsed = JSON.parse(Buffer.isBuffer(payload) ? payload.toString('utf8') : payload) as { type?: unknown, alert?: { patientId?: unknown } }
    const patientId = parsed.alert?.patientId
    return typeof patientId === 'string' && typeof parsed.type === 'string' ? { type: parsed.type, patientId } : null
  } catch {
    return null
  }
}

export interface AuthorizeForwardContext {
  deviceSessions: DeviceSessions
  people: PeopleSessions
  /** A decision older than this (ms) stops deliveries until a recheck renews it. */
  verdictMaxAgeMs: number
  refuse: Refuse
}

/** Aedes' authorizeForward: the packet to deliver, or null to withhold it. */
export function authorizeForward (ctx: AuthorizeForwardContext, client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
  const person = ctx.people.principals.get(client)
  if (person !== undefined) {
    const live = ctx.people.live.get(client)
    const fresh = (checkedAt: number | undefined): boolean => checkedAt !== undefined && Date.now() - checkedAt <= ctx.verdictMaxAgeMs
    const ownTopic = USER_ALERT_TOPIC.exec(packet.topic)
    const alertTopic = ALERT_TOPIC.exec(packet.topic)
    // Comments are clinical notes: only for principals who may read them (as GET /v1/alerts/{id}/events).
    const needsPayload = ownTopic !== null || !person.permissions.has('clinical-notes:read')
    const event = needsPayload ? eventOf(packet.payload) : null
    const noteAllowed = event?.type !== 'commented' || person.permissions.has('clinical-notes:read')
    let allowed = false
    if (ownTopic !== null) {
      // A person's own alerts (the topic names the connected person: client ids are bound to
      // their owner), each for a patient they were found to see within the max age.
      const own = live?.own
      allowed = ownTopic[1] === person.userId && own != null && fresh(own.checkedAt) && event !== null &&
        (own.visible === null || own.visible.has(event.patientId))
    } else if (alertTopic !== null) {
      allowed = fresh(live?.patients.get(alertTopic[1]!))
    }
    if (allowed && noteAllowed) return packet
    ctx.refuse('forward_not_allowed', { person: true, userId: person.userId }, 'debug')
    return null
  }
  const session = ctx.deviceSessions.get(client)
  if (session !== undefined && packet.topic.startsWith(`devices/${session.deviceId}/`)) return packet
  return null
}
