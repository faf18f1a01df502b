import type { Client, Subscription } from 'aedes'
import type { AlertSubscriberAuth } from './options.ts'
import type { PeopleSessions } from './people-sessions.ts'
import { ALERT_TOPIC, USER_ALERT_TOPIC, type DeviceSessions, type Refuse } from './shared.ts'

// What a client may subscribe to: a device, topics under its own devices/{id}/; a person,
// alerts/{patientId} for patients they may see and their own users/{id}/alerts. A refused
// filter gets SUBACK 0x80 and the session goes on.

export interface AuthorizeSubscribeContext {
  deviceSessions: DeviceSessions
  people: PeopleSessions
  alertSubscribers: AlertSubscriberAuth | null | undefined
  refuse: Refuse
}

/** Aedes' authorizeSubscribe; a person's grant also fills the decisions authorizeForward reads. */
export function authorizeSubscribe (ctx: AuthorizeSubscribeContext, client: Client, subscription: Subscription, done: (error: Error | null, subscription?: Subscription | null) => void): void {
  const person = ctx.people.principals.get(client)
  if (person !== undefined) {
    const alertTopic = ALERT_TOPIC.exec(subscription.topic)
    const refuseSubscription = (): void => {
      ctx.refuse('subscribe_not_allowed', { person: true })
      done(null, null)
    }
    // A person's own alerts (those an escalation tier reached them with): users/{their id}/alerts.
    const ownTopic = USER_ALERT_TOPIC.exec(subscription.topic)
    if (ownTopic !== null && ctx.alertSubscribers != null) {
      if (ownTopic[1] !== person.userId) return refuseSubscription()
      // Its deliveries are for patients the person may see now: find them before granting.
      ctx.alertSubscribers.visiblePatients(person).then((visible) => {
        const live = ctx.people.live.get(client)
        if (live !== undefined) live.own = { visible, checkedAt: Date.now() }
        done(null, subscription)
      }, () => refuseSubscription())
      return
    }
    if (alertTopic === null || ctx.alertSubscribers == null) return refuseSubscription()
    ctx.alertSubscribers.canSee(person, alertTopic[1]!).then((allowed) => {
      if (!allowed) return refuseSubscription()
      ctx.people.live.get(client)?.patients.set(alertTopic[1]!, Date.now())
      done(null, subscription)
    }, () => refuseSubscription())
    return
  }
  const session = ctx.deviceSessions.get(client)
  const prefix = `devices/${session?.deviceId ?? ''}/`
  // Also keeps $SYS/ out of reach: a device subscribes under its own prefix only.
  if (session === undefined || !subscription.topic.startsWith(prefix)) {
    ctx.refuse('subscribe_not_allowed', { deviceId: session?.deviceId })
    return done(null, null) // SUBACK 0x80 for this filter; the session goes on
  }
  done(null, subscription)
}
