import type { Client } from 'aedes'
import type { Principal } from '../access/auth.ts'
import { defaultOptions, type AlertSubscriberAuth } from './options.ts'
import type { Refuse } from './shared.ts'

// People's alert sessions (CONNECT with username `bearer`): who is behind each, the access
// decisions every delivery reads (authorize-forward.ts), and the recheck that renews them or
// closes the session once the token or the patient access ended.

/** The patients a person's own users/{id}/alerts topic may name (null: all), and when that was found (ms). */
export interface OwnAlerts { visible: ReadonlySet<string> | null, checkedAt: number }

export interface LivePerson {
  /** The bearer secret the session connected with (memory only, never logged). */
  bearer: string
  /** Per patient, when this connection's principal was last found to reach them (ms). */
  patients: Map<string, number>
  own: OwnAlerts | null
}

export interface PeopleSessions {
  /** People may subscribe to alerts/{patientId} and their own users/{userId}/alerts, never publish. */
  readonly principals: WeakMap<Client, Principal>
  /**
   * Live person sessions: the synchronous cache authorizeForward reads, filled by
   * authorizeSubscribe (also for the subscriptions Aedes restores on a resumed session), renewed
   * by recheckPeople. A patient not in `patients` (never checked for this principal, or the check
   * refused) gets no delivery. `own`: once the person subscribes to users/{id}/alerts, the
   * patients they may see; each delivery on that topic names its patient (alert.patientId in the
   * payload) and passes only for one of them, within the same max age.
   */
  readonly live: Map<Client, LivePerson>
}

export function createPeopleSessions (): PeopleSessions {
  return { principals: new WeakMap(), live: new Map() }
}

/** How often sessions are checked again, and the age past which a decision stops deliveries (ms). */
export function recheckTiming (subscribers: AlertSubscriberAuth | null | undefined): { intervalMs: number, verdictMaxAgeMs: number } {
  const intervalMs = subscribers?.recheckIntervalMs ?? defaultOptions.recheckIntervalMs
  return { intervalMs, verdictMaxAgeMs: defaultOptions.verdictMaxAgeIntervals * intervalMs }
}

/** A person authenticated: their session starts with no patient decided yet. */
export function openPersonSession (people: PeopleSessions, client: Client, principal: Principal, bearer: string): void {
  people.principals.set(client, principal)
  people.live.set(client, { bearer, patients: new Map(), own: null })
}

export function forgetPersonSession (people: PeopleSessions, client: Client): void {
  people.live.delete(client)
}

export interface RecheckContext {
  people: PeopleSessions
  subscribers: AlertSubscriberAuth | null | undefined
  refuse: Refuse
}

/** A person keeps receiving alerts only while their token is valid and each subscribed patient is still theirs. Resolves with how many sessions were closed. */
export async function recheckPeople (ctx: RecheckContext): Promise<number> {
  const subscribers = ctx.subscribers
  if (subscribers == null) return 0
  let closed = 0
  for (const [client, live] of [...ctx.people.live]) {
    let keep: boolean
    try {
      const principal = await subscribers.authenticate(live.bearer)
      keep = principal !== null && principal.permissions.has('alerts:read')
      const checked: string[] = []
      const checkedAt = Date.now()
      for (const patientId of live.patients.keys()) {
        if (!keep || principal === null) break
        keep = await subscribers.canSee(principal, patientId)
        checked.push(patientId)
      }
      // The own-alerts topic stays the person's: patients no longer visible are dropped from
      // it (their deliveries refused), the session goes on.
      const visible = keep && principal !== null && live.own !== null ? await subscribers.visiblePatients(principal) : undefined
      if (keep && principal !== null) {
        ctx.people.principals.set(client, principal)
        for (const patientId of checked) live.patients.set(patientId, checkedAt)
        if (visible !== undefined) live.own = { visible, checkedAt }
      }
    } catch {
      // The database is unreachable: the decision cannot be made now; the next check makes it.
      continue
    }
    if (!keep) {
      ctx.people.live.delete(client)
      ctx.refuse('access_revoked', { person: true })
      client.close()
      closed++
    }
  }
  return closed
}

/** Rechecks every interval while people may connect; returns what stops it. */
export function startRechecks (ctx: RecheckContext, intervalMs: number): () => void {
  if (ctx.subscribers == null) return () => {}
  const timer = setInterval(() => { recheckPeople(ctx).catch(() => {}) }, intervalMs)
  timer.unref()
  return () => clearInterval(timer)
}
