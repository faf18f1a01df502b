/**
 * The seam between the alert engine (rules file, pure evaluation, NEWS2, Piscina) and the
 * alert lifecycle (alerts table, escalation, notifications, API). Both sides code against
 * these types; change them together.
 */

export type Severity = 'low' | 'medium' | 'high' | 'critical'
export type RuleKind = 'threshold' | 'rate_of_change' | 'no_data' | 'news2'

/** A condition a rule watches started (firing) or ended (cleared, after hysteresis). */
export interface ConditionChange {
  patientId: string
  /** The rule's id from the rules file (stable across edits). */
  ruleId: string
  kind: RuleKind
  status: 'firing' | 'cleared'
  severity: Severity
  /** Escalation policy named by the rule. */
  escalationPolicy: string | null
  /** When the condition changed (reading time or evaluation time), ms since epoch. */
  at: number
  /** Short, PHI-free text: metric, value, bound ("heart_rate 131 /min above 120 for 5 min"). */
  summary: string
  /** Machine-readable facts: metric, value, threshold, window, NEWS2 sub-scores, no-data cause … */
  details: Record<string, unknown>
  /**
   * Absent: a transition (started, ended, band changed). Set on a `firing` change for a
   * condition that was already firing: 'update' when its facts changed (a new NEWS2 total: the
   * open alert's summary and details follow), 'reminder' when they did not (sent every third of
   * reAlertMs while the condition holds, so an alert resolved by hand re-opens).
   */
  ongoing?: 'update' | 'reminder'
  /** The rule's re-alert interval: an alert resolved by hand while its condition holds re-opens once this has passed. */
  reAlertMs?: number
}

/** What the lifecycle side receives from the engine. */
export interface ConditionSink {
  /** Opens/updates/auto-resolves alerts. Resolves once they are stored. */
  apply (changes: readonly ConditionChange[]): Promise<void>
}

/** An escalation policy from the rules file: tiers notified in order until acknowledged. */
export interface EscalationPolicy {
  id: string
  tiers: Array<{
    /** Who is notified at this tier: role names ('nurse', 'doctor', 'rapid_response') or webhook ids. */
    notify: string[]
    /** Time to acknowledge before the next tier (ms); the last tier repeats at this interval. */
    afterMs: number
  }>
}

export interface WebhookTarget {
  id: string
  url: string
  /** Name of the environment variable holding the HMAC secret (secrets never live in the file). */
  secretEnv: string
  /** Only alerts of at least this severity. */
  minSeverity: Severity
  /**
   * The rules file's webhookAllowList names this URL's origin: delivered although not https or
   * not to a public address. Otherwise every delivery checks the resolved address (alerts/webhook-address.ts).
   */
  allowListed?: boolean
  /**
   * Named in an escalation tier and given no minSeverity in the rules file: the webhook is that
   * tier, receiving only the alerts that reach it (and their later events), not every alert.
   */
  tierOnly?: boolean
}

/** A device's last known state, for no-data causes. */
export interface DevicePresence {
  deviceId: string
  patientId: string | null
  connected: boolean
  /** Last connect or disconnect, ms since epoch. */
  changedAt: number | null
  /** Last accepted reading, ms since epoch (receive time). */
  lastReadingAt: number | null
  /** From devices/{id}/status: battery percentage, when reported. */
  batteryPercent: number | null
  lastStatusAt: number | null
}

/**
 * Where the engine reads device presence for its no-data checks: the lifecycle's presence
 * (alerts/lifecycle/presence.ts) implements it, flushing the reading times it holds first.
 */
export interface DevicePresenceSource {
  presence (): Promise<DevicePresence[]>
}

/**
 * Why a silent patient's devices are silent (ConditionChange.details.cause of a no_data change,
 * as stored in alerts.details): decided by the engine (alerts/engine/no-data.ts) from DevicePresence.
 */
export type NoDataCause = 'no_device' | 'disconnected' | 'low_battery' | 'connected_silent' | 'never_reported'

/** What node-cron's schedule() gives back, as far as the alert schedules need it (injectable in tests). */
export interface ScheduledJob { stop (): void | Promise<void> }
/** node-cron's `cron.schedule` (six-field form, with seconds): both halves run their periodic work through it. */
export type Schedule = (expression: string, run: () => Promise<void>) => ScheduledJob

/** The active rules file as the lifecycle side needs it (escalation and webhook targets). */
export interface AlertRulesView {
  /** sha256 of the active rules document. */
  version: string
  escalationPolicies: EscalationPolicy[]
  webhooks: WebhookTarget[]
}

/**
 * What the lifecycle side reads from the rules file, at each use so hot reloads apply. Built from
 * the rules file (alerts/engine/rules-file.ts: rulesViewOf) before either half starts.
 */
export interface AlertRulesSource {
  /** The rules' escalation policies by id. */
  policies (): ReadonlyMap<string, EscalationPolicy>
  webhooks (): readonly WebhookTarget[]
}

/** What the engine offers besides feeding the ConditionSink; startAlertEngine's handle implements it. */
export interface AlertEngineSeam {
  /**
   * Runs the no_data rules against this device presence. The changes are already handed to the
   * ConditionSink when this resolves; they are returned for logging and tests, not to be applied
   * again. Given a DevicePresenceSource and a Schedule, the engine runs it itself every 30 s.
   */
  evaluateNoData (presence: readonly DevicePresence[]): Promise<ConditionChange[]>
  /** The current rules' escalation policies and webhooks; changes with hot reloads, so read it each time. */
  rulesView (): AlertRulesView
}
