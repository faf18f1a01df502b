import type { Logger } from 'pino'
import type { AlertStore, DueEscalationRow } from './alert-store.ts'
import type { EscalationPolicy, Schedule, ScheduledJob } from '../contract.ts'

export interface EscalationStep {
  id: string
  fromTier: number
  fromNextAt: number
  /** The tier notified now: the next one, or the last again (the last tier repeats). */
  tier: number
  notify: readonly string[]
  /** When this tier's time to acknowledge runs out. */
  nextAt: number
}

/**
 * Which open alerts escalate now, and to what. Pure: alerts whose policy is gone (a rules
 * reload removed it) or has no tiers are left alone. The next deadline counts from the one
 * that passed, so a tick that runs late does not stretch the schedule; after downtime longer
 * than a tier it counts from now instead, so an outage does not fire a burst of escalations.
 */
export function dueEscalations (alerts: readonly DueEscalationRow[], policies: ReadonlyMap<string, EscalationPolicy>, now: number): EscalationStep[] {
  const steps: EscalationStep[] = []
  for (const alert of alerts) {
    if (alert.nextEscalationAt > now) continue
    const policy = policies.get(alert.escalationPolicy)
    if (policy === undefined || policy.tiers.length === 0) continue
    const tier = Math.min(alert.escalationTier + 1, policy.tiers.length - 1)
    const { notify, afterMs } = policy.tiers[tier]!
    const scheduled = alert.nextEscalationAt + afterMs
    steps.push({
      id: alert.id,
      fromTier: alert.escalationTier,
      fromNextAt: alert.nextEscalationAt,
      tier,
      notify,
      nextAt: scheduled > now ? scheduled : now + afterMs
    })
  }
  return steps
}


export interface EscalationDeps {
  store: AlertStore
  policies: () => ReadonlyMap<string, EscalationPolicy>
  now: () => number
  log: Logger
  /** node-cron's schedule; when absent nothing is scheduled and only tick() runs. */
  schedule?: Schedule
}

/** Every 15 s (node-cron's six-field form has seconds): escalation is minutes-scale, 15 s late at most. */
export const ESCALATION_CRON = '*/15 * * * * *'

/**
 * Escalation on a schedule: each tick re-notifies the next tier of every open alert whose time
 * to acknowledge has run out. tick() is exported so tests drive it with their own clock.
 */
export function startEscalation (deps: EscalationDeps) {
  const log = deps.log.child({ component: 'escalation' })
  let running: Promise<number> | null = null

  async function runTick (): Promise<number> {
    const now = deps.now()
    const steps = dueEscalations(await deps.store.dueForEscalation(now), deps.policies(), now)
    let escalated = 0
    for (const step of steps) {
      if (await deps.store.escalate(step)) escalated++
    }
    if (escalated > 0) log.info({ escalated }, 'alerts escalated')
    return escalated
  }

  /** Runs one pass; a pass already under way is joined rather than run twice. Resolves to the number escalated. */
  function tick (): Promise<number> {
    running ??= runTick().finally(() => { running = null })
    return running
  }

  const job = deps.schedule?.(ESCALATION_CRON, async () => {
    await tick().catch((err: Error) => log.error({ err }, 'escalation pass failed'))
  })

  return {
    tick,
    async close (): Promise<void> {
      await job?.stop()
      await running?.catch(() => {})
    }
  }
}

export type Escalation = ReturnType<typeof startEscalation>
