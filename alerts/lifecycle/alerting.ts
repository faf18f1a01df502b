import type pg from 'pg'
import type { Keyring } from '../../crypto/field-encryption.ts'
import type { Logger } from 'pino'
import type { Metrics } from '../../observability/metrics.ts'
import { createOnCallStore, type OnCallStore } from './on-call.ts'
import { createAlertMetrics } from './alert-metrics.ts'
import { createAlertStore, type AlertStore } from './alert-store.ts'
import type { AlertRulesSource, ConditionSink, Schedule } from '../contract.ts'
import { startEscalation } from './escalation.ts'
import type { MqttAlertRelay } from './mqtt-relay.ts'
import { createNotifier, type Notifier } from './notifier.ts'
import { createPresence, type Presence } from './presence.ts'

/** Escalation policies and webhooks from the rules file (rulesSourceOf), read at each use so hot reloads apply. */
export interface AlertingDeps extends AlertRulesSource {
  pool: pg.Pool
  /** Encrypts alert comments and resolve reasons (clinical free text). */
  keyring: Keyring
  log: Logger
  metrics: Metrics
  /** Notifications on MQTT: the relay the broker attaches to (createMqttAlertRelay); absent: no MQTT channel. */
  mqtt?: MqttAlertRelay
  /** node-cron's schedule (`cron.schedule`); absent: nothing runs on its own (tests call the ticks). */
  schedule?: Schedule
  /** Where webhook secrets (WebhookTarget.secretEnv) are read; default process.env. */
  env?: Readonly<Record<string, string | undefined>>
  now?: () => number
  webhookMaxAttempts?: number
  webhookRetryBaseMs?: number
  /** Several processes: the others hear of the events committed here, and this one of theirs, so every SSE stream gets every event. */
  peers?: AlertEventPeers
}

/** Alert event ids between processes (cluster/ carries them); the events themselves are read from Postgres. */
export interface AlertEventPeers {
  announce (eventIds: readonly string[]): void
  /** Returns the unsubscribe function. */
  onAnnounced (listener: (eventIds: readonly string[]) => void): () => void
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
 * the escalation schedule, notifications (SSE, MQTT through the relay, webhooks), and device
 * presence (fed by the broker and ingest, read by the engine's no-data checks).
 */
export async function startAlerting (deps: AlertingDeps) {
  const now = deps.now ?? Date.now
  const log = deps.log.child({ component: 'alerting' })
  const notifier = createNotifier({
    pool: deps.pool,
    log: deps.log,
    now,
    mqtt: deps.mqtt ?? null,
    webhooks: deps.webhooks,
    metrics: createAlertMetrics(deps.metrics.registry),
    env: deps.env ?? process.env,
    webhookMaxAttempts: deps.webhookMaxAttempts,
    webhookRetryBaseMs: deps.webhookRetryBaseMs
  })
  const store = createAlertStore({
    pool: deps.pool,
    keyring: deps.keyring,
    now,
    policies: deps.policies,
    webhooks: deps.webhooks,
    onCommitted: (events) => {
      notifier.publish(events)
      deps.peers?.announce(events.map((committed) => committed.event.id))
    }
  })
  // Ids only cross Redis: comments and resolve reasons are clinical notes, read (and decrypted)
  // here from Postgres, with the recipients as committed.
  const stopPeers = deps.peers?.onAnnounced((ids) => {
    store.eventsByIds(ids).then((events) => notifier.relay(events), (err: Error) => {
      log.warn({ err: err.message, events: ids.length }, 'alert events from another process not read: SSE streams here miss them until they resume')
    })
  })
  const sink: ConditionSink = { apply: (changes) => store.apply(changes) }
  const escalation = startEscalation({ store, policies: deps.policies, now, log: deps.log, schedule: deps.schedule })
  const presence: Presence = createPresence({ pool: deps.pool, log: deps.log, now })
  // Webhook deliveries a previous run left pending.
  void notifier.drain()
  log.info({ webhooks: deps.webhooks().length, policies: deps.policies().size }, 'alerting started')

  return {
    sink,
    store,
    notifier,
    /** Device presence: the broker's session hooks record into it (ingest/decode-status.ts), the engine's no-data checks read it. */
    presence,
    escalation,
    /** For buildApi's `alerts`. */
    api: { store, notifier, onCall: createOnCallStore(deps.pool) } satisfies AlertingApi,
    async close (): Promise<void> {
      stopPeers?.()
      await escalation.close()
      await notifier.close()
      await presence.close()
    }
  }
}

export type Alerting = Awaited<ReturnType<typeof startAlerting>>
