import type { Aedes } from 'aedes'
import type pg from 'pg'
import type { Keyring } from '../../crypto/field-encryption.ts'
import type { Logger } from 'pino'
import type { Metrics } from '../../observability/metrics.ts'
import { createOnCallStore, type OnCallStore } from './on-call.ts'
import type { RejectionLog } from '../../devices/rejections.ts'
import { createAlertMetrics } from './alert-metrics.ts'
import { createAlertStore, type AlertStore } from './alert-store.ts'
import type { ConditionChange, ConditionSink, DevicePresence, EscalationPolicy, WebhookTarget } from '../contract.ts'
import { startEscalation, type Schedule } from './escalation.ts'
import { createNotifier, type Notifier } from './notifier.ts'
import { createPresence, startNoDataChecks, type Presence } from './presence.ts'

export interface AlertingDeps {
  pool: pg.Pool
  /** Encrypts alert comments and resolve reasons (clinical free text). */
  keyring: Keyring
  log: Logger
  metrics: Metrics
  rejections: RejectionLog
  /** Escalation policies from the rules file, read at each use so hot reloads apply. */
  policies: () => ReadonlyMap<string, EscalationPolicy>
  webhooks: () => readonly WebhookTarget[]
  /** Publishes on the embedded broker; set later with setMqttPublisher when the broker starts after alerting. */
  publishMqtt?: ((topic: string, payload: string) => Promise<void>) | null
  /** The engine's no-data evaluation; absent: no no-data schedule. */
  evaluateNoData?: (presence: DevicePresence[], now: number) => ConditionChange[] | Promise<ConditionChange[]>
  /** node-cron's schedule (`cron.schedule`); absent: nothing runs on its own (tests call the ticks). */
  schedule?: Schedule
  /** Where webhook secrets (WebhookTarget.secretEnv) are read; default process.env. */
  env?: Readonly<Record<string, string | undefined>>
  now?: () => number
  webhookMaxAttempts?: number
  webhookRetryBaseMs?: number
}

/** What the API's alert routes use. */
export interface AlertingApi {
  store: AlertStore
  notifier: Notifier
  /** The on-call roster the escalation tiers reach (admin routes /v1/patients/{id}/on-call). */
  onCall: OnCallStore
  /** SSE heartbeat, and how often a stream re-checks its caller's token and patients (ms; default 15 s). */
  streamHeartbeatMs?: number
}

/**
 * The alert lifecycle: the ConditionSink the engine feeds, the alert store the API serves,
 * escalation and no-data schedules, notifications, and device presence for the broker.
 */
export async function startAlerting (deps: AlertingDeps) {
  const now = deps.now ?? Date.now
  const log = deps.log.child({ component: 'alerting' })
  const notifier = createNotifier({
    pool: deps.pool,
    log: deps.log,
    now,
    publishMqtt: deps.publishMqtt ?? null,
    webhooks: deps.webhooks,
    metrics: createAlertMetrics(deps.metrics.registry),
    env: deps.env ?? process.env,
    webhookMaxAttempts: deps.webhookMaxAttempts,
    webhookRetryBaseMs: deps.webhookRetryBaseMs
  })
  const store = createAlertStore({
    pool: deps.pool, keyring: deps.keyring, now, policies: deps.policies, webhooks: deps.webhooks, onCommitted: (events) => notifier.publish(events)
  })
  const sink: ConditionSink = { apply: (changes) => store.apply(changes) }
  const escalation = startEscalation({ store, policies: deps.policies, now, log: deps.log, schedule: deps.schedule })
  const presence: Presence = createPresence({ pool: deps.pool, rejections: deps.rejections, metrics: deps.metrics, log: deps.log, now })
  const noData = deps.evaluateNoData === undefined
    ? null
    : startNoDataChecks({ presence, evaluate: deps.evaluateNoData, sink, log: deps.log, now, schedule: deps.schedule })
  // Webhook deliveries a previous run left pending.
  void notifier.drain()
  log.info({ webhooks: deps.webhooks().length, policies: deps.policies().size }, 'alerting started')

  return {
    sink,
    store,
    notifier,
    presence,
    escalation,
    noData,
    /** For buildApi's `alerts`. */
    api: { store, notifier, onCall: createOnCallStore(deps.pool) } satisfies AlertingApi,
    /** For createBroker's `presence`. */
    brokerPresence: {
      connected: (deviceId: string) => presence.connected(deviceId),
      disconnected: (deviceId: string) => presence.disconnected(deviceId),
      status: (deviceId: string, topic: string, payload: Buffer) => presence.status(deviceId, topic, payload)
    },
    /** The broker starts after alerting (it needs the presence hooks): hand its publish over here. */
    setMqttPublisher (publish: (topic: string, payload: string) => Promise<void>): void {
      notifier.setMqttPublisher(publish)
    },
    async close (): Promise<void> {
      await noData?.close()
      await escalation.close()
      await notifier.close()
      await presence.close()
    }
  }
}

export type Alerting = Awaited<ReturnType<typeof startAlerting>>

/** Alert notifications on alerts/{patientId} and users/{userId}/alerts: QoS 1, never retained (a late subscriber must not see stale alerts). */
export function aedesPublisher (aedes: Aedes): (topic: string, payload: string) => Promise<void> {
  return async (topic, payload) => {
    await new Promise<void>((resolve, reject) => {
      aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false }, (err) => {
        if (err === null || err === undefined) resolve()
        else reject(err)
      })
    })
  }
}
