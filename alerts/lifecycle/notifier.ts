import { createHmac } from 'node:crypto'
import type pg from 'pg'
import type { Logger } from 'pino'
import type { AlertMetrics } from './alert-metrics.ts'
import { notificationPayload, type CommittedEvent } from './alert-store.ts'
import type { WebhookTarget } from '../contract.ts'
import { postWebhook, WEBHOOK_SECRET_PREFIX } from '../webhook-address.ts'
import type { MqttAlertRelay } from './mqtt-relay.ts'

export interface DeliveryRecord {
  eventId: string
  alertId: string
  channel: 'sse' | 'mqtt' | 'webhook'
  target: string
  attempt: number
  status: 'delivered' | 'failed' | 'gave_up'
  httpStatus?: number | null
  error?: string | null
}

export interface NotifierDeps {
  pool: pg.Pool
  log: Logger
  now: () => number
  /** The embedded broker's publish (QoS 1, not retained), through the relay the broker attaches to; null: no MQTT channel. */
  mqtt: Pick<MqttAlertRelay, 'target'> | null
  webhooks: () => readonly WebhookTarget[]
  metrics?: AlertMetrics
  /** Where WebhookTarget.secretEnv names are looked up (process.env). */
  env: Readonly<Record<string, string | undefined>>
  /** Attempts per webhook delivery, the first included (5). */
  webhookMaxAttempts?: number
  /** Delay before retry n (1-based): base · 4^(n-1), base 1 s: 1 s, 4 s, 16 s, 64 s. */
  webhookRetryBaseMs?: number
  /** Per attempt (10 s). */
  webhookTimeoutMs?: number
}

export type AlertListener = (committed: CommittedEvent) => void

/** Sign `${timestamp}.${body}` with the webhook's secret: the X-Vigil-Signature value. */
export function webhookSignature (secret: string, timestamp: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`
}

// A claimed outbox row is not retried by another pass (or instance) before this: longer than
// one attempt's timeout, so a crash mid-attempt delays that delivery by at most this much.
const CLAIM_LEASE_MS = 60_000

/**
 * Fan-out of committed alert events: live SSE listeners, the MQTT topics alerts/{patientId} and
 * users/{userId}/alerts (the people the alert's tiers reached),
 * and webhooks from the persisted outbox with exponential backoff. Every attempt on every
 * channel is recorded in notification_deliveries.
 */
export function createNotifier (deps: NotifierDeps) {
  const log = deps.log.child({ component: 'notifier' })
  const maxAttempts = deps.webhookMaxAttempts ?? 5
  const retryBaseMs = deps.webhookRetryBaseMs ?? 1000
  const timeoutMs = deps.webhookTimeoutMs ?? 10_000
  const listeners = new Set<AlertListener>()
  let timer: NodeJS.Timeout | null = null
  let draining: Promise<void> | null = null
  let again = false
  let closed = false

  async function record (d: DeliveryRecord): Promise<void> {
    deps.metrics?.notifications.inc({ channel: d.channel, status: d.status })
    await deps.pool.query(
      `INSERT INTO notification_deliveries (event_id, alert_id, channel, target, attempt, status, http_status, error, at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
      [d.eventId, d.alertId, d.channel, d.target, d.attempt, d.status, d.httpStatus ?? null, d.error ?? null, new Date(deps.now())])
  }

  function recordLater (d: DeliveryRecord): void {
    record(d).catch((err: Error) => log.error({ err, channel: d.channel, eventId: d.eventId }, 'delivery not recorded'))
  }

  /** alerts/{patientId} (everyone who may see the patient) and users/{userId}/alerts for each person the alert's tiers reached. */
  async function publishMqtt (committed: CommittedEvent): Promise<void> {
    const publish = deps.mqtt?.target() ?? null
    if (publish === null) return
    const payload = JSON.stringify(notificationPayload(committed.event, committed.alert))
    const topics = [`alerts/${committed.alert.patientId}`, ...committed.recipients.map((userId) => `users/${userId}/alerts`)]
    await Promise.all(topics.map(async (topic) => {
      const base = { eventId: committed.event.id, alertId: committed.alert.id, channel: 'mqtt' as const, target: topic, attempt: 1 }
      try {
        await publish(topic, payload)
        recordLater({ ...base, status: 'delivered' })
      } catch (err) {
        recordLater({ ...base, status: 'failed', error: (err as Error).message })
      }
    }))
  }

  async function attempt (row: { id: string, event_id: string, alert_id: string, webhook_id: string, payload: string, attempts: number }): Promise<void> {
    const n = row.attempts + 1
    const target = deps.webhooks().find((w) => w.id === row.webhook_id)
    const base = { eventId: row.event_id, alertId: row.alert_id, channel: 'webhook' as const, target: row.webhook_id, attempt: n }
    let httpStatus: number | null = null
    let error: string | null = null
    if (target === undefined) {
      error = 'webhook no longer configured'
    } else {
      // Only VIGIL_WEBHOOK_* variables: a rules file must not turn VIGIL_ADMIN_TOKEN into a signing key it can observe.
      const secret = target.secretEnv.startsWith(WEBHOOK_SECRET_PREFIX) ? deps.env[target.secretEnv] : undefined
      if (!target.secretEnv.startsWith(WEBHOOK_SECRET_PREFIX)) {
        error = `secretEnv ${target.secretEnv} does not begin with ${WEBHOOK_SECRET_PREFIX}: not delivered`
      } else if (secret === undefined || secret === '') {
        error = `secret environment variable ${target.secretEnv} is not set`
      } else {
        const timestamp = String(Math.floor(deps.now() / 1000))
        try {
          httpStatus = await postWebhook(target, {
            'content-type': 'application/json',
            'user-agent': 'Vigil-Webhook/1',
            'x-vigil-event-id': row.event_id,
            'x-vigil-delivery-attempt': String(n),
            'x-vigil-timestamp': timestamp,
            'x-vigil-signature': webhookSignature(secret, timestamp, row.payload)
          }, row.payload, timeoutMs)
          if (httpStatus < 200 || httpStatus >= 300) error = `HTTP ${httpStatus}`
        } catch (err) {
          const name = (err as Error).name
          error = name === 'TimeoutError' || name === 'AbortError' ? `no answer within ${timeoutMs} ms` : (err as Error).message
        }
      }
    }
    if (error === null) {
      await deps.pool.query("UPDATE webhook_outbox SET state = 'delivered', attempts = $2 WHERE id = $1", [row.id, n])
      await record({ ...base, status: 'delivered', httpStatus })
      return
    }
    const giveUp = n >= maxAttempts || target === undefined
    const retryAt = new Date(deps.now() + retryBaseMs * 4 ** (n - 1))
    await deps.pool.query('UPDATE webhook_outbox SET state = $2, attempts = $3, next_attempt_at = $4 WHERE id = $1',
      [row.id, giveUp ? 'gave_up' : 'pending', n, retryAt])
    await record({ ...base, status: giveUp ? 'gave_up' : 'failed', httpStatus, error })
    log[giveUp ? 'error' : 'warn']({ webhookId: row.webhook_id, eventId: row.event_id, attempt: n, httpStatus, error }, giveUp ? 'webhook delivery given up' : 'webhook delivery failed, will retry')
  }

  async function drainOnce (): Promise<void> {
    const now = deps.now()
    // Claim due rows by pushing their time out by a lease: a second pass or instance skips them.
    const { rows } = await deps.pool.query(
      `UPDATE webhook_outbox o SET next_attempt_at = $2
       FROM alert_events e
       WHERE o.id IN (SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED)
         AND e.id = o.event_id
       RETURNING o.id, o.event_id, e.alert_id, o.webhook_id, o.payload, o.attempts`,
      [new Date(now), new Date(now + CLAIM_LEASE_MS)])
    await Promise.all(rows.map((r) => attempt({ ...r, id: String(r.id), event_id: String(r.event_id) }).catch((err: Error) => {
      log.error({ err, webhookId: r.webhook_id }, 'webhook attempt not recorded')
    })))
    if (rows.length === 100) again = true
  }

  async function scheduleNext (): Promise<void> {
    if (closed) return
    const { rows } = await deps.pool.query("SELECT MIN(next_attempt_at) AS next FROM webhook_outbox WHERE state = 'pending'")
    const next: Date | null = rows[0].next
    if (timer !== null) clearTimeout(timer)
    timer = null
    if (next === null || closed) return
    timer = setTimeout(() => { timer = null; drain() }, Math.max(0, next.getTime() - deps.now()))
  }

  /** Delivers what is due now, then sets a timer for the next due row. */
  function drain (): Promise<void> {
    if (closed) return Promise.resolve()
    if (draining !== null) {
      again = true
      return draining
    }
    draining = (async () => {
      do {
        again = false
        await drainOnce()
      } while (again && !closed)
      await scheduleNext()
    })().catch((err: Error) => {
      log.error({ err }, 'webhook outbox pass failed')
      if (!closed) timer = setTimeout(() => { timer = null; drain() }, 5000)
    }).finally(() => { draining = null })
    return draining
  }

  return {
    /** The alert store's onCommitted: live channels now, webhooks from the outbox. */
    publish (events: readonly CommittedEvent[]): void {
      if (closed) return
      for (const committed of events) {
        deps.metrics?.alertEvents.inc({ type: committed.event.type, severity: committed.alert.severity })
        for (const listener of listeners) {
          try {
            listener(committed)
          } catch (err) {
            log.error({ err }, 'alert listener failed')
          }
        }
        void publishMqtt(committed)
      }
      void drain()
    },
    /**
     * Events another process committed (clustering): to this process's SSE streams only. MQTT
     * subscribers got them through the broker's bus, and webhooks from the shared outbox.
     */
    relay (events: readonly CommittedEvent[]): void {
      if (closed) return
      for (const committed of events) {
        for (const listener of listeners) {
          try {
            listener(committed)
          } catch (err) {
            log.error({ err }, 'alert listener failed')
          }
        }
      }
    },
    /** Live events for an SSE stream; returns the unsubscribe function. */
    subscribe (listener: AlertListener): () => void {
      listeners.add(listener)
      return () => { listeners.delete(listener) }
    },
    /** Records an SSE write (the stream knows when it wrote). */
    recordDelivery: recordLater,
    /** Resumes deliveries left pending by a previous run; also the hook tests use to wait. */
    drain,
    async close (): Promise<void> {
      closed = true
      if (timer !== null) clearTimeout(timer)
      timer = null
      await draining
      listeners.clear()
    }
  }
}

export type Notifier = ReturnType<typeof createNotifier>
