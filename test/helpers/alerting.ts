import pino from 'pino'
import { buildApi, type ApiDeps } from '../../api/app.ts'
import type { Principal } from '../../api/auth.ts'
import { rolePermissions } from '../../api/auth.ts'
import type { PatientAccessPolicy } from '../../api/patient-access.ts'
import { VigilError } from '../../api/errors.ts'
import { startAlerting, type Alerting, type AlertingDeps } from '../../alerts/alerting.ts'
import type { ConditionChange, EscalationPolicy, WebhookTarget } from '../../alerts/contract.ts'
import { openDatabase, type Database } from '../../store/database.ts'
import { apiDepsFor } from './api-deps.ts'
import { createTestDatabase } from './postgres.ts'

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
  const admin = rolePermissions.admin
  let n = 0
  const policy: PatientAccessPolicy = {
    async require (request, patientId) {
      const seen = scoped.get(request.principal!.tokenId)
      if (seen !== undefined && !seen.has(patientId)) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
      if (await deps.patients.get(patientId) === null) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
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
      const token = await deps.tokens.authenticate(bearer)
      return token === null ? null : { ...token, userId: null, permissions: admin }
    },
    /** A bearer token for a clinician (a user) who sees only `patients`. */
    clinicianToken (patients: string[], permissions: Iterable<string> = ['alerts:read', 'alerts:ack', 'alerts:write']): { token: string, userId: string } {
      n++
      const token = `clinician-token-${n}-${Math.random().toString(36).slice(2)}`
      const userId = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`
      const tokenId = `clinician-${n}`
      scoped.set(tokenId, new Set(patients))
      clinicians.set(token, { tokenId, name: tokenId, role: 'admin', userId, permissions: new Set(permissions) as Principal['permissions'] })
      return { token, userId }
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
  createPatient (): Promise<string>
  close (): Promise<void>
}

/** A fresh database, startAlerting and the API with the alert routes. */
export async function startAlertingFixture (options: Partial<AlertingDeps> & { manualClock?: boolean, databaseUrl?: string | null, dataDir?: string } = {}): Promise<AlertingFixture> {
  const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
  const testDb = options.databaseUrl === undefined ? await createTestDatabase() : null
  const db = await openDatabase({ databaseUrl: testDb?.url ?? options.databaseUrl ?? null, dataDir: options.dataDir ?? '', log })
  const deps = apiDepsFor(db, log)
  const access = testAccess(deps)
  const policies = new Map<string, EscalationPolicy>()
  const webhooks: WebhookTarget[] = []
  const clock = options.manualClock === true ? manualClock() : null
  const alerting = await startAlerting({
    pool: db.pool,
    log,
    metrics: deps.metrics,
    rejections: deps.rejections,
    policies: () => policies,
    webhooks: () => webhooks,
    ...(clock === null ? {} : { now: clock.now }),
    ...options
  })
  const app = await buildApi({ ...deps, authenticate: access.authenticate, patientAccess: access.policy, alerts: alerting.api })
  const { token } = await deps.tokens.create('alerts test', 'admin')
  return {
    db, deps, alerting, app, access, policies, webhooks, clock,
    adminHeaders: { authorization: `Bearer ${token}` },
    async createPatient () {
      return (await deps.patients.create('Test Patient')).id
    },
    async close () {
      await app.close()
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
