import type { AddressInfo } from 'node:net'
import pino from 'pino'
import { brokerLimitsFrom, createBroker, type BrokerHandle } from '../../broker/broker.ts'
import { loadConfig } from '../../config/config.ts'
import { startIngest } from '../../ingest/ingest.ts'
import { buildApi, type ApiDeps } from '../../api/app.ts'
import type { Principal } from '../../access/auth.ts'
import type { PatientAccessPolicy } from '../../access/patient-access.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { startAlerting, type Alerting, type AlertingDeps } from '../../alerts/lifecycle/alerting.ts'
import { createMqttAlertRelay } from '../../alerts/lifecycle/mqtt-relay.ts'
import { deviceSessionHooks } from '../../ingest/decode-status.ts'
import type { ConditionChange, EscalationPolicy, WebhookTarget } from '../../alerts/contract.ts'
import { openDatabase, type Database } from '../../store/database.ts'
import { apiDepsFor } from './api-deps.ts'
import { testKeyring } from './keys.ts'
import { createTestDatabase } from './postgres.ts'
import { seedEmbeddedDatabase } from './pglite-template.ts'

/** A clock tests move by hand. */
export function manualClock (start = Date.parse('2026-11-20T08:00:00Z')) {
  let now = start
  return { now: () => now, advance (ms: number) { now += ms }, set (ms: number) { now = ms } }
}

/**
 * Principals by bearer token: the admin token sees everything; `clinicianToken(patients)` makes
 * a token that sees only those patients (the care-team policy of the people work, in small).
 */
export function testAccess (deps: ApiDeps) {
  const scoped = new Map<string, ReadonlySet<string>>()
  let n = 0
  const policy: PatientAccessPolicy = {
    async require (request, patientId) {
      const seen = scoped.get(request.principal!.tokenId)
      if (seen !== undefined && !seen.has(patientId)) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
      if (await deps.patients.get(patientId) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    },
    async requireAnd (request, patientId, access, read) {
      await policy.require(request, patientId, access)
      return await read()
    },
    async visiblePatients (principal) { return scoped.get(principal.tokenId) ?? null },
    async canSee (principal, patientId) { return (scoped.get(principal.tokenId)?.has(patientId) ?? true) && await deps.patients.get(patientId) !== null }
  }
  const clinicians = new Map<string, Principal>()
  return {
    policy,
    async authenticate (bearer: string): Promise<Principal | null> {
      const clinician = clinicians.get(bearer)
      if (clinician !== undefined) return clinician
      return await deps.access.authenticate(bearer)
    },
    /** A bearer token for a clinician (a user) who sees only `patients`. */
    clinicianToken (patients: string[], permissions: Iterable<string> = ['alerts:read', 'alerts:ack', 'alerts:write', 'alerts:comment', 'clinical-notes:read']): { token: string, userId: string } {
      n++
      const token = `clinician-token-${n}-${Math.random().toString(36).slice(2)}`
      const userId = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`
      const tokenId = `clinician-${n}`
      scoped.set(tokenId, new Set(patients))
      clinicians.set(token, {
        tokenId, name: tokenId, role: 'nurse', kind: 'user', roles: ['nurse'], userId,
        permissions: new Set(permissions) as Principal['permissions'], patientScopes: new Set(['care-team'])
      })
      return { token, userId }
    },
    /** The token stops authenticating (logout, revocation, expiry). */
    revoke (token: string): void {
      clinicians.delete(token)
    },
    /** The clinician behind `token` now sees only `patients` (a care-team change). */
    rescope (token: string, patients: string[]): void {
      const principal = clinicians.get(token)
      if (principal !== undefined) scoped.set(principal.tokenId, new Set(patients))
    }
  }
}

export interface AlertingFixture {
  db: Database
  deps: ApiDeps
  alerting: Alerting
  app: Awaited<ReturnType<typeof buildApi>>
  access: ReturnType<typeof testAccess>
  adminHeaders: { authorization: string }
  policies: Map<string, EscalationPolicy>
  webhooks: WebhookTarget[]
  clock: ReturnType<typeof manualClock> | null
  /** With `network: true`: the broker (port 0) and the API listening on 127.0.0.1. */
  broker: BrokerHandle | null
  baseUrl: string | null
  createPatient (): Promise<string>
  close (): Promise<void>
}

/** A fresh database, startAlerting and the API with the alert routes. */
export async function startAlertingFixture (options: Partial<AlertingDeps> & { manualClock?: boolean, databaseUrl?: string | null, dataDir?: string, network?: boolean, realAccess?: boolean, streamHeartbeatMs?: number } = {}): Promise<AlertingFixture> {
  const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
  const testDb = options.databaseUrl === undefined ? await createTestDatabase() : null
  const databaseUrl = testDb?.url ?? options.databaseUrl ?? null
  const db = await openDatabase({ databaseUrl, dataDir: databaseUrl === null && options.dataDir !== undefined ? await seedEmbeddedDatabase(options.dataDir) : options.dataDir ?? '', log })
  const deps = apiDepsFor(db, log)
  const access = testAccess(deps)
  // realAccess: the production access policy (care teams, on call, break-glass, audit) instead of the test one.
  const patientAccess = options.realAccess === true ? deps.access.patientAccess : access.policy
  const policies = new Map<string, EscalationPolicy>()
  const webhooks: WebhookTarget[] = []
  const clock = options.manualClock === true ? manualClock() : null
  const { manualClock: _m, databaseUrl: _d, dataDir: _dd, network: _n, realAccess: _r, streamHeartbeatMs, ...alertingOptions } = options
  const alertRelay = createMqttAlertRelay()
  const alerting = await startAlerting({
    pool: db.pool,
    log,
    metrics: deps.metrics,
    mqtt: alertRelay,
    policies: () => policies,
    webhooks: () => webhooks,
    ...(clock === null ? {} : { now: clock.now }),
    ...alertingOptions,
    keyring: alertingOptions.keyring ?? testKeyring()
  })
  let broker: BrokerHandle | null = null
  let ingest: Awaited<ReturnType<typeof startIngest>> | null = null
  if (options.network === true) {
    const config = loadConfig({ MQTT_PORT: '0', HTTP_PORT: '0' })
    ingest = await startIngest({ ...deps, spool: null, onAccepted: (r) => alerting.presence.readingsAccepted(r) })
    broker = await createBroker({
      host: '127.0.0.1',
      port: 0,
      // No per-address limits: every test client connects from 127.0.0.1.
      limits: { ...brokerLimitsFrom(config), connectRatePerAddress: 0, authFailuresBeforeLockout: 0 },
      devices: deps.devices,
      ingest,
      metrics: deps.metrics,
      log,
      presence: deviceSessionHooks({ presence: alerting.presence, rejections: deps.rejections, metrics: deps.metrics, log }),
      alertSubscribers: { authenticate: access.authenticate, canSee: patientAccess.canSee, visiblePatients: patientAccess.visiblePatients },
      alertRelay
    })
  }
  const app = await buildApi({ ...deps, authenticate: access.authenticate, patientAccess, alerts: streamHeartbeatMs === undefined ? alerting.api : { ...alerting.api, streamHeartbeatMs } })
  let baseUrl: string | null = null
  if (options.network === true) {
    await app.listen({ host: '127.0.0.1', port: 0 })
    baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  }
  const { token } = await deps.tokens.create('alerts test', 'admin')
  return {
    db, deps, alerting, app, access, policies, webhooks, clock, broker, baseUrl,
    adminHeaders: { authorization: `Bearer ${token}` },
    async createPatient () {
      return (await deps.patients.create('Test Patient')).id
    },
    async close () {
      await app.close()
      await broker?.close()
      await ingest?.close()
      await alerting.close()
      await db.close()
      await testDb?.drop()
    }
  }
}

/** A ConditionChange with test defaults. */
export function change (patientId: string, overrides: Partial<ConditionChange> = {}): ConditionChange {
  return {
    patientId,
    ruleId: 'hr-high',
    kind: 'threshold',
    status: 'firing',
    severity: 'high',
    escalationPolicy: null,
    at: Date.parse('2026-11-20T07:59:00Z'),
    summary: 'heart_rate 131 /min above 120 for 5 min',
    details: { metric: 'heart_rate', value: 131, threshold: 120 },
    ...overrides
  }
}

/** Creates a device assigned to `patientId` (from an hour ago) with a fresh MQTT credential. */
export async function provisionDevice (f: AlertingFixture, patientId: string): Promise<{ deviceId: string, password: string }> {
  const mac = ['02', ...Array.from({ length: 5 }, () => Math.floor(Math.random() * 256).toString(16).padStart(2, '0'))].join(':')
  const device = await f.deps.devices.create({ name: 'Test monitor', mac, firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2026-01-01T00:00:00Z' } as any, null)
  await f.deps.devices.assign(device.id, patientId, new Date(Date.now() - 3_600_000), null)
  const cred = await f.deps.devices.rotateCredential(device.id)
  return { deviceId: device.id, password: cred.password }
}
