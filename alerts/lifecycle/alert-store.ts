import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { VigilError } from '../../errors/catalogue.ts'
import type { ConditionChange, EscalationPolicy, Severity, WebhookTarget } from '../contract.ts'
import { openClinicalText, sealClinicalText } from '../../crypto/clinical-text.ts'
import { inTransaction } from '../../store/database.ts'
import type { Keyring } from '../../crypto/field-encryption.ts'

export type AlertStatus = 'open' | 'acknowledged' | 'resolved'
export type AlertEventType = 'opened' | 'updated' | 'severity_raised' | 'acknowledged' | 'assigned' | 'commented' | 'escalated' | 'resolved'

export interface Alert {
  id: string
  patientId: string
  ruleId: string
  kind: string
  severity: Severity
  status: AlertStatus
  summary: string
  details: Record<string, unknown>
  openedAt: string
  lastFiredAt: string
  lastChangedAt: string
  occurrences: number
  acknowledgedBy: string | null
  acknowledgedAt: string | null
  assignedTo: string | null
  resolvedBy: string | null
  resolvedAt: string | null
  resolution: 'auto' | 'manual' | null
  escalationPolicy: string | null
  escalationTier: number
  nextEscalationAt: string | null
}

export interface AlertEvent {
  /** bigserial as a string: the SSE event id. */
  id: string
  alertId: string
  patientId: string
  type: AlertEventType
  actorKind: 'user' | 'token' | 'system'
  actor: string | null
  at: string
  /**
   * comment: {text} (a clinical note: API only); opened/escalated: {tier, notify, notified}
   * (notified: the user ids the tier reached); updated: {from, to}; resolved: {resolution, reason?} …
   */
  body: Record<string, unknown>
}

/** Who did something: a person, an API token, or Vigil itself. */
export interface Actor { kind: 'user' | 'token' | 'system', id: string | null }
export const systemActor: Actor = { kind: 'system', id: null }

/**
 * An event and the alert as it stood once the event was committed; recipients: every person the
 * alert's tiers have notified so far, this event's included (whose "my alerts" it belongs in).
 */
export interface CommittedEvent { event: AlertEvent, alert: Alert, recipients: readonly string[] }

/** How an alert last reached a person. */
export interface MyNotification { tier: number, role: string, via: 'care_team' | 'on_call', at: string }

/** A person a tier reaches: holding the role on the patient's care team, or on call for it. */
export interface Recipient { userId: string, role: string, via: 'care_team' | 'on_call' }

export interface AlertFilter {
  status?: AlertStatus
  patientId?: string
  ruleId?: string
  severity?: Severity
  /** opened_at bounds, ms since epoch: [from, to). */
  from?: number
  to?: number
  /** null: every patient. */
  patients: ReadonlySet<string> | null
  limit: number
  /** Rows with seq below this (the previous page's last). */
  beforeSeq?: string
}

export interface RuleBurden {
  ruleId: string
  alerts: number
  patients: number
  /** Alerts per monitored patient-day in the window; null when no patient was monitored. */
  alertsPerPatientDay: number | null
  acknowledged: number
  medianSecondsToAcknowledge: number | null
  p90SecondsToAcknowledge: number | null
}

export interface DueEscalationRow {
  id: string
  escalationPolicy: string
  escalationTier: number
  nextEscalationAt: number
}

export const severityRank: Readonly<Record<Severity, number>> = { low: 0, medium: 1, high: 2, critical: 3 }

// Events that reach webhooks (SSE and MQTT carry every event). Comments and assignments are
// for the care team's screens, not for paging systems.
// A summary following its condition ('updated') is for screens too: a paging system is paged by
// the transitions.
const WEBHOOK_EVENTS: ReadonlySet<AlertEventType> = new Set(['opened', 'severity_raised', 'escalated', 'acknowledged', 'resolved'])
const TIER_EVENTS: ReadonlySet<AlertEventType> = new Set(['opened', 'escalated'])

export interface AlertStoreDeps {
  pool: pg.Pool
  keyring: Keyring
  now: () => number
  policies: () => ReadonlyMap<string, EscalationPolicy>
  webhooks: () => readonly WebhookTarget[]
  /** Called after each commit with what it wrote, for fan-out. Must not throw. */
  onCommitted: (events: readonly CommittedEvent[]) => void
}

/**
 * The alerts table and its events. Every mutation runs in one transaction that writes the
 * alert row, its event and the webhook outbox rows together, so a crash never leaves an event
 * without its owed webhook deliveries; fan-out to live channels happens after commit.
 */
export function createAlertStore (deps: AlertStoreDeps) {
  const { pool, now, keyring } = deps
  const eventOf = (r: any): AlertEvent => eventOfRow(keyring, r)

  async function transaction<T> (fn: (client: pg.PoolClient, events: CommittedEvent[]) => Promise<T>): Promise<T> {
    const events: CommittedEvent[] = []
    const result = await inTransaction(pool, async (client) => await fn(client, events))
    if (events.length > 0) deps.onCommitted(events)
    return result
  }

  /**
   * The people a tier's notify names reach for this patient at `at`: active users holding one
   * of those roles on the patient's care team, and those on call for the care team in one.
   */
  async function recipientsOf (client: pg.PoolClient, patientId: string, roles: readonly string[], at: Date): Promise<Recipient[]> {
    const { rows } = await client.query(
      `SELECT DISTINCT ON (x.user_id) x.user_id, x.role, x.via FROM (
         SELECT ct.clinician_id AS user_id, r.role_id AS role, 'care_team' AS via, 1 AS rank
           FROM care_team ct JOIN roles r ON r.user_id = ct.clinician_id
          WHERE ct.patient_id = $1 AND ct.valid_from <= $3 AND (ct.valid_to IS NULL OR ct.valid_to > $3) AND r.role_id = ANY($2::text[])
         UNION ALL
         SELECT oc.user_id, oc.role, 'on_call', 0 FROM on_call oc
          WHERE oc.patient_id = $1 AND oc.valid_from <= $3 AND oc.valid_to > $3 AND oc.role = ANY($2::text[])
       ) x JOIN users u ON u.id = x.user_id AND u.active
       ORDER BY x.user_id, x.rank, x.role`,
      [patientId, [...roles], at])
    return rows.map((r) => ({ userId: r.user_id, role: r.role, via: r.via }))
  }

  async function addEvent (client: pg.PoolClient, events: CommittedEvent[], alert: Alert, type: AlertEventType, actor: Actor, body: Record<string, unknown>): Promise<AlertEvent> {
    const notify = Array.isArray(body.notify) ? body.notify as string[] : []
    const reached = TIER_EVENTS.has(type) && notify.length > 0 ? await recipientsOf(client, alert.patientId, notify, new Date(now())) : []
    if (TIER_EVENTS.has(type) && notify.length > 0) body = { ...body, notified: reached.map((r) => r.userId) }
    // Clinical free text (a comment, a resolve reason) is encrypted bound to the event's id, taken first.
    const { rows: [next] } = await client.query("SELECT nextval(pg_get_serial_sequence('alert_events', 'id'))::text AS id")
    const id = next.id as string
    const stored = { ...body }
    let keyId: string | null = null
    for (const field of FREE_TEXT_FIELDS) {
      if (typeof stored[field] !== 'string') continue
      stored[field] = sealClinicalText(keyring, stored[field], { table: 'alert_events', column: `body.${field}`, rowId: id })
      keyId = keyring.activeKeyId
    }
    const { rows } = await client.query(
      `INSERT INTO alert_events (id, alert_id, patient_id, type, actor_kind, actor, at, body, key_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *`,
      [id, alert.id, alert.patientId, type, actor.kind, actor.id, new Date(now()), stored, keyId])
    const event = eventOf(rows[0])
    if (reached.length > 0) {
      await client.query(
        `INSERT INTO alert_recipients (alert_id, user_id, event_id, tier, role, via)
         SELECT $1, u.user_id, $2, $3, u.role, u.via FROM jsonb_to_recordset($4::jsonb) AS u(user_id uuid, role text, via text)`,
        [alert.id, event.id, typeof body.tier === 'number' ? body.tier : 0, JSON.stringify(reached.map((r) => ({ user_id: r.userId, role: r.role, via: r.via })))])
    }
    const { rows: everyone } = await client.query('SELECT DISTINCT user_id FROM alert_recipients WHERE alert_id = $1', [alert.id])
    if (WEBHOOK_EVENTS.has(type)) {
      for (const target of deps.webhooks()) {
        // A tier-only webhook gets the alerts that reached its tier, and what happens to them after.
        let wanted = notify.includes(target.id) || (target.tierOnly !== true && severityRank[alert.severity] >= severityRank[target.minSeverity])
        if (!wanted && target.tierOnly === true) {
          const earlier = await client.query(
            'SELECT 1 FROM webhook_outbox o JOIN alert_events e ON e.id = o.event_id WHERE e.alert_id = $1 AND o.webhook_id = $2 LIMIT 1', [alert.id, target.id])
          wanted = (earlier.rowCount ?? 0) > 0
        }
        if (!wanted) continue
        await client.query(
          `INSERT INTO webhook_outbox (event_id, webhook_id, payload, next_attempt_at, state)
           VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT DO NOTHING`,
          [event.id, target.id, JSON.stringify(notificationPayload(event, alert)), new Date(now())])
      }
    }
    events.push({ event, alert, recipients: everyone.map((r) => r.user_id as string) })
    return event
  }

  async function lockUnresolved (client: pg.PoolClient, patientId: string, ruleId: string): Promise<Alert | null> {
    const { rows } = await client.query(
      "SELECT * FROM alerts WHERE patient_id = $1 AND rule_id = $2 AND status <> 'resolved' FOR UPDATE", [patientId, ruleId])
    return rows.length === 0 ? null : alertOf(rows[0])
  }

  async function lockById (client: pg.PoolClient, id: string): Promise<Alert> {
    const { rows } = await client.query('SELECT * FROM alerts WHERE id = $1 FOR UPDATE', [id])
    if (rows.length === 0) throw new VigilError('VIGIL_ERR_UNKNOWN_ALERT', 'no alert with this id')
    return alertOf(rows[0])
  }

  async function update (client: pg.PoolClient, id: string, set: Record<string, unknown>): Promise<Alert> {
    const columns = Object.keys(set)
    const { rows } = await client.query(
      `UPDATE alerts SET ${[...columns.map((c, i) => `${c} = $${i + 2}`), `last_changed_at = $${columns.length + 2}`].join(', ')}
       WHERE id = $1 RETURNING *`,
      [id, ...columns.map((c) => set[c]), new Date(now())])
    return alertOf(rows[0])
  }

  /** The newest alert of this patient and rule (resolved: there is no unresolved one). */
  async function latest (client: pg.PoolClient, patientId: string, ruleId: string): Promise<Alert | null> {
    const { rows } = await client.query('SELECT * FROM alerts WHERE patient_id = $1 AND rule_id = $2 ORDER BY seq DESC LIMIT 1', [patientId, ruleId])
    return rows.length === 0 ? null : alertOf(rows[0])
  }

  async function fire (client: pg.PoolClient, events: CommittedEvent[], change: ConditionChange): Promise<void> {
    const existing = await lockUnresolved(client, change.patientId, change.ruleId)
    let reopenedFrom: string | null = null
    if (existing === null && change.ongoing !== undefined) {
      // The engine says the condition still holds, but nobody is alerted: the alert was resolved
      // by hand. Alarm practice: it comes back once the re-alert interval has passed.
      const previous = await latest(client, change.patientId, change.ruleId)
      if (previous?.resolvedAt != null && Date.parse(previous.resolvedAt) + (change.reAlertMs ?? 0) > now()) return
      reopenedFrom = previous?.id ?? null
    }
    if (existing === null) {
      const policy = change.escalationPolicy === null ? undefined : deps.policies().get(change.escalationPolicy)
      const first = policy?.tiers[0]
      const { rows } = await client.query(
        `INSERT INTO alerts (id, patient_id, rule_id, kind, severity, status, summary, details, opened_at, last_fired_at,
           last_changed_at, escalation_policy, escalation_tier, next_escalation_at)
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $8, $9, $10, 0, $11)
         ON CONFLICT (patient_id, rule_id) WHERE status <> 'resolved' DO NOTHING RETURNING *`,
        [randomUUID(), change.patientId, change.ruleId, change.kind, change.severity, change.summary, change.details,
          new Date(change.at), new Date(now()), change.escalationPolicy,
          first === undefined ? null : new Date(now() + first.afterMs)])
      // Another transaction opened it between the lock and the insert: update that one instead.
      if (rows.length === 0) return await fire(client, events, change)
      const alert = alertOf(rows[0])
      await addEvent(client, events, alert, 'opened', systemActor, {
        ...(first === undefined ? {} : { tier: 0, notify: first.notify }),
        ...(reopenedFrom === null ? {} : { reopenedFrom })
      })
      return
    }
    // A replayed change (same or older time) changes nothing: apply is idempotent.
    if (change.at <= Date.parse(existing.lastFiredAt)) return
    if (change.ongoing === 'reminder') {
      // Nothing new about the condition: the open alert stays as it is, except when it last held.
      await client.query('UPDATE alerts SET last_fired_at = $2 WHERE id = $1', [existing.id, new Date(change.at)])
      return
    }
    const raised = severityRank[change.severity] > severityRank[existing.severity]
    const alert = await update(client, existing.id, {
      ...(change.ongoing === undefined ? { occurrences: existing.occurrences + 1 } : {}),
      last_fired_at: new Date(change.at),
      summary: change.summary,
      details: change.details,
      ...(raised ? { severity: change.severity } : {})
    })
    const summaryChanged = change.summary !== existing.summary
    if (raised) {
      await addEvent(client, events, alert, 'severity_raised', systemActor, { from: existing.severity, to: change.severity, ...(summaryChanged ? { summary: change.summary } : {}) })
    } else if (summaryChanged) {
      // The open alert follows its condition (a NEWS2 total changing within a band); each change is on record.
      await addEvent(client, events, alert, 'updated', systemActor, { from: existing.summary, to: change.summary })
    }
  }

  async function clear (client: pg.PoolClient, events: CommittedEvent[], change: ConditionChange): Promise<void> {
    const existing = await lockUnresolved(client, change.patientId, change.ruleId)
    // A clear older than the latest firing is stale (changes from a batch arriving out of order).
    if (existing === null || change.at < Date.parse(existing.lastFiredAt)) return
    const alert = await update(client, existing.id, {
      status: 'resolved', resolution: 'auto', resolved_at: new Date(now()), resolved_by: null, next_escalation_at: null
    })
    await addEvent(client, events, alert, 'resolved', systemActor, { resolution: 'auto' })
  }

  return {
    /** The ConditionSink: firing opens or updates the unresolved alert, cleared auto-resolves it. */
    async apply (changes: readonly ConditionChange[]): Promise<void> {
      for (const change of changes) {
        await transaction(async (client, events) => {
          if (change.status === 'firing') await fire(client, events, change)
          else await clear(client, events, change)
        })
      }
    },

    async acknowledge (id: string, actor: Actor): Promise<Alert> {
      return await transaction(async (client, events) => {
        const existing = await lockById(client, id)
        if (existing.status === 'resolved') throw new VigilError('VIGIL_ERR_ALERT_RESOLVED', 'the alert is already resolved')
        if (existing.status === 'acknowledged') throw new VigilError('VIGIL_ERR_ALERT_ACKNOWLEDGED', 'the alert is already acknowledged')
        const alert = await update(client, id, {
          status: 'acknowledged', acknowledged_by: actor.id, acknowledged_at: new Date(now()), next_escalation_at: null
        })
        await addEvent(client, events, alert, 'acknowledged', actor, {})
        return alert
      })
    },

    async assign (id: string, userId: string, actor: Actor): Promise<Alert> {
      return await transaction(async (client, events) => {
        const existing = await lockById(client, id)
        if (existing.status === 'resolved') throw new VigilError('VIGIL_ERR_ALERT_RESOLVED', 'the alert is already resolved')
        const alert = await update(client, id, { assigned_to: userId })
        await addEvent(client, events, alert, 'assigned', actor, { assignedTo: userId })
        return alert
      })
    },

    /** Comments are allowed on resolved alerts too (notes written afterwards). */
    async comment (id: string, text: string, actor: Actor): Promise<AlertEvent> {
      return await transaction(async (client, events) => {
        await lockById(client, id)
        const alert = await update(client, id, {})
        return await addEvent(client, events, alert, 'commented', actor, { text })
      })
    },

    async resolve (id: string, reason: string | null, actor: Actor): Promise<Alert> {
      return await transaction(async (client, events) => {
        const existing = await lockById(client, id)
        if (existing.status === 'resolved') throw new VigilError('VIGIL_ERR_ALERT_RESOLVED', 'the alert is already resolved')
        const alert = await update(client, id, {
          status: 'resolved', resolution: 'manual', resolved_by: actor.id, resolved_at: new Date(now()), next_escalation_at: null
        })
        await addEvent(client, events, alert, 'resolved', actor, reason === null ? { resolution: 'manual' } : { resolution: 'manual', reason })
        return alert
      })
    },

    /** Open alerts whose escalation time has come. */
    async dueForEscalation (at: number): Promise<DueEscalationRow[]> {
      const { rows } = await pool.query(
        `SELECT id, escalation_policy, escalation_tier, next_escalation_at FROM alerts
         WHERE status = 'open' AND next_escalation_at IS NOT NULL AND next_escalation_at <= $1 AND escalation_policy IS NOT NULL
         ORDER BY next_escalation_at LIMIT 1000`, [new Date(at)])
      return rows.map((r) => ({
        id: r.id, escalationPolicy: r.escalation_policy, escalationTier: r.escalation_tier, nextEscalationAt: r.next_escalation_at.getTime()
      }))
    },

    /**
     * Moves an alert to `tier` if it is still open and still where the caller saw it (an
     * acknowledgement or another instance's tick in between wins). Returns whether it did.
     */
    async escalate (step: { id: string, fromTier: number, fromNextAt: number, tier: number, notify: readonly string[], nextAt: number | null }): Promise<boolean> {
      return await transaction(async (client, events) => {
        const { rows } = await client.query(
          `SELECT * FROM alerts WHERE id = $1 AND status = 'open' AND escalation_tier = $2 AND next_escalation_at = $3 FOR UPDATE`,
          [step.id, step.fromTier, new Date(step.fromNextAt)])
        if (rows.length === 0) return false
        const alert = await update(client, step.id, {
          escalation_tier: step.tier, next_escalation_at: step.nextAt === null ? null : new Date(step.nextAt)
        })
        await addEvent(client, events, alert, 'escalated', systemActor, { tier: step.tier, notify: step.notify })
        return true
      })
    },

    async get (id: string): Promise<Alert | null> {
      const { rows } = await pool.query('SELECT * FROM alerts WHERE id = $1', [id])
      return rows.length === 0 ? null : alertOf(rows[0])
    },

    /** Newest first (creation order). */
    async list (filter: AlertFilter): Promise<Array<Alert & { seq: string }>> {
      const where: string[] = []
      const params: unknown[] = []
      const add = (sql: string, value: unknown): void => {
        params.push(value)
        where.push(sql.replace('?', `$${params.length}`))
      }
      if (filter.status !== undefined) add('status = ?', filter.status)
      if (filter.patientId !== undefined) add('patient_id = ?', filter.patientId)
      if (filter.ruleId !== undefined) add('rule_id = ?', filter.ruleId)
      if (filter.severity !== undefined) add('severity = ?', filter.severity)
      if (filter.from !== undefined) add('opened_at >= ?', new Date(filter.from))
      if (filter.to !== undefined) add('opened_at < ?', new Date(filter.to))
      if (filter.patients !== null) add('patient_id = ANY(?::uuid[])', [...filter.patients])
      if (filter.beforeSeq !== undefined) add('seq < ?', filter.beforeSeq)
      params.push(filter.limit)
      const { rows } = await pool.query(
        `SELECT * FROM alerts ${where.length === 0 ? '' : `WHERE ${where.join(' AND ')}`} ORDER BY seq DESC LIMIT $${params.length}`, params)
      return rows.map((r) => ({ ...alertOf(r), seq: String(r.seq) }))
    },

    /**
     * "My alerts": alerts an escalation tier reached this person with, newest first, each with
     * how it last reached them (tier, role, care team or on call, when).
     */
    async listForRecipient (userId: string, filter: { status?: AlertStatus, unresolved?: boolean, limit: number, beforeSeq?: string }): Promise<Array<Alert & { seq: string, notifiedAs: MyNotification }>> {
      const { rows } = await pool.query(
        `SELECT a.*, n.tier AS n_tier, n.role AS n_role, n.via AS n_via, n.at AS n_at FROM alerts a
         JOIN LATERAL (SELECT r.tier, r.role, r.via, e.at FROM alert_recipients r JOIN alert_events e ON e.id = r.event_id
                       WHERE r.alert_id = a.id AND r.user_id = $1 ORDER BY r.event_id DESC LIMIT 1) n ON true
         WHERE ($2::text IS NULL OR a.status = $2) AND (NOT $3 OR a.status <> 'resolved') AND ($4::bigint IS NULL OR a.seq < $4)
         ORDER BY a.seq DESC LIMIT $5`,
        [userId, filter.status ?? null, filter.unresolved === true, filter.beforeSeq ?? null, filter.limit])
      return rows.map((r) => ({
        ...alertOf(r), seq: String(r.seq), notifiedAs: { tier: r.n_tier, role: r.n_role, via: r.n_via, at: iso(r.n_at)! }
      }))
    },

    async events (alertId: string): Promise<AlertEvent[]> {
      const { rows } = await pool.query('SELECT * FROM alert_events WHERE alert_id = $1 ORDER BY id', [alertId])
      return rows.map(eventOf)
    },

    /** Events after `afterId` with their alerts, oldest first: what an SSE client missed (with `recipient`: of that person's alerts only). */
    /** Committed events by id, in id order (another process announced them: clustering). */
    async eventsByIds (ids: readonly string[]): Promise<CommittedEvent[]> {
      const { rows } = await pool.query(
        `SELECT e.id AS e_id, e.alert_id AS e_alert_id, e.patient_id AS e_patient_id, e.type AS e_type, e.actor_kind AS e_actor_kind,
                e.actor AS e_actor, e.at AS e_at, e.body AS e_body, e.key_id AS e_key_id, a.*,
                (SELECT array_agg(DISTINCT r.user_id::text) FROM alert_recipients r WHERE r.alert_id = e.alert_id AND r.event_id <= e.id) AS e_recipients
         FROM alert_events e JOIN alerts a ON a.id = e.alert_id
         WHERE e.id = ANY($1::bigint[])
         ORDER BY e.id`, [ids])
      return rows.map((r) => ({
        event: eventOf({ id: r.e_id, alert_id: r.e_alert_id, patient_id: r.e_patient_id, type: r.e_type, actor_kind: r.e_actor_kind, actor: r.e_actor, at: r.e_at, body: r.e_body, key_id: r.e_key_id }),
        alert: alertOf(r),
        recipients: r.e_recipients ?? []
      }))
    },

    async eventsAfter (afterId: string, limit: number, recipient?: string): Promise<CommittedEvent[]> {
      const { rows } = await pool.query(
        `SELECT e.id AS e_id, e.alert_id AS e_alert_id, e.patient_id AS e_patient_id, e.type AS e_type, e.actor_kind AS e_actor_kind,
                e.actor AS e_actor, e.at AS e_at, e.body AS e_body, e.key_id AS e_key_id, a.*,
                (SELECT array_agg(DISTINCT r.user_id::text) FROM alert_recipients r WHERE r.alert_id = e.alert_id AND r.event_id <= e.id) AS e_recipients
         FROM alert_events e JOIN alerts a ON a.id = e.alert_id
         WHERE e.id > $1 AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM alert_recipients r WHERE r.alert_id = e.alert_id AND r.user_id = $3 AND r.event_id <= e.id))
         ORDER BY e.id LIMIT $2`, [afterId, limit, recipient ?? null])
      return rows.map((r) => ({
        event: eventOf({ id: r.e_id, alert_id: r.e_alert_id, patient_id: r.e_patient_id, type: r.e_type, actor_kind: r.e_actor_kind, actor: r.e_actor, at: r.e_at, body: r.e_body, key_id: r.e_key_id }),
        alert: alertOf(r),
        recipients: r.e_recipients ?? []
      }))
    },

    /**
     * Alert burden per rule over [from, to): alerts opened per monitored patient-day, and time
     * to acknowledge. Monitored patient-days come from device assignments overlapping the
     * window, each patient's span taken from its earliest start to its latest end (two devices
     * at once count once).
     */
    async burden (from: number, to: number): Promise<RuleBurden[]> {
      const window = [new Date(from), new Date(to)]
      const days = await pool.query(
        `SELECT COALESCE(SUM(GREATEST(0, EXTRACT(EPOCH FROM (LEAST($2::timestamptz, span_end) - GREATEST($1::timestamptz, span_start))))), 0) / 86400.0 AS patient_days
         FROM (SELECT patient_id, MIN(valid_from) AS span_start, MAX(COALESCE(valid_to, $2::timestamptz)) AS span_end
               FROM device_assignments WHERE valid_from < $2 AND (valid_to IS NULL OR valid_to > $1) GROUP BY patient_id) spans`, window)
      const patientDays = Number(days.rows[0].patient_days)
      const { rows } = await pool.query(
        `SELECT rule_id, COUNT(*)::int AS alerts, COUNT(DISTINCT patient_id)::int AS patients,
                COUNT(acknowledged_at)::int AS acknowledged,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (acknowledged_at - opened_at))) AS median_ack,
                percentile_cont(0.9) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (acknowledged_at - opened_at))) AS p90_ack
         FROM alerts WHERE opened_at >= $1 AND opened_at < $2 GROUP BY rule_id ORDER BY rule_id`, window)
      return rows.map((r) => ({
        ruleId: r.rule_id,
        alerts: r.alerts,
        patients: r.patients,
        alertsPerPatientDay: patientDays > 0 ? r.alerts / patientDays : null,
        acknowledged: r.acknowledged,
        medianSecondsToAcknowledge: r.median_ack === null ? null : Number(r.median_ack),
        p90SecondsToAcknowledge: r.p90_ack === null ? null : Number(r.p90_ack)
      }))
    }
  }
}

export type AlertStore = ReturnType<typeof createAlertStore>

/**
 * What leaves Vigil about an alert event (webhooks, MQTT, SSE): ids, rule, severity, status
 * and the engine's PHI-free summary. Never names, never comment text or resolve reasons.
 */
export function notificationPayload (event: AlertEvent, alert: Alert): Record<string, unknown> {
  const extra: Record<string, unknown> = {}
  if (typeof event.body.tier === 'number') extra.tier = event.body.tier
  if (Array.isArray(event.body.notify)) extra.notify = event.body.notify
  if (Array.isArray(event.body.notified)) extra.notified = event.body.notified
  if (typeof event.body.reopenedFrom === 'string') extra.reopenedFrom = event.body.reopenedFrom
  if (typeof event.body.assignedTo === 'string') extra.assignedTo = event.body.assignedTo
  return {
    eventId: event.id,
    type: event.type,
    at: event.at,
    ...extra,
    alert: {
      id: alert.id,
      patientId: alert.patientId,
      ruleId: alert.ruleId,
      severity: alert.severity,
      status: alert.status,
      summary: alert.summary
    }
  }
}

const iso = (d: Date | null): string | null => d === null ? null : d.toISOString()

function alertOf (r: any): Alert {
  return {
    id: r.id,
    patientId: r.patient_id,
    ruleId: r.rule_id,
    kind: r.kind,
    severity: r.severity,
    status: r.status,
    summary: r.summary,
    details: r.details ?? {},
    openedAt: iso(r.opened_at)!,
    lastFiredAt: iso(r.last_fired_at)!,
    lastChangedAt: iso(r.last_changed_at)!,
    occurrences: r.occurrences,
    acknowledgedBy: r.acknowledged_by,
    acknowledgedAt: iso(r.acknowledged_at),
    assignedTo: r.assigned_to,
    resolvedBy: r.resolved_by,
    resolvedAt: iso(r.resolved_at),
    resolution: r.resolution,
    escalationPolicy: r.escalation_policy,
    escalationTier: r.escalation_tier,
    nextEscalationAt: iso(r.next_escalation_at)
  }
}

// Event body fields that hold clinical free text (crypto/clinical-text.ts lists them too).
const FREE_TEXT_FIELDS = ['text', 'reason'] as const

function eventOfRow (keyring: Keyring, r: any): AlertEvent {
  const body: Record<string, unknown> = { ...(r.body ?? {}) }
  for (const field of FREE_TEXT_FIELDS) {
    if (typeof body[field] === 'string') {
      body[field] = openClinicalText(keyring, body[field], r.key_id ?? null, { table: 'alert_events', column: `body.${field}`, rowId: String(r.id) })
    }
  }
  return {
    id: String(r.id),
    alertId: r.alert_id,
    patientId: r.patient_id,
    type: r.type,
    actorKind: r.actor_kind,
    actor: r.actor,
    at: iso(r.at)!,
    body
  }
}
