import type { FastifyRequest } from 'fastify'
import type { AuditEntry, AuditLog } from './audit-log.ts'
import type { PeopleStore } from './people.ts'
import type { PatientStore } from '../patients/patients.ts'
import type { PatientScope, Principal } from './auth.ts'
import { VigilError } from '../errors/catalogue.ts'
import type { PatientAccessPolicy, PatientAccessRequest } from './patient-access.ts'

/**
 * How far each role category reaches into patients (issue 3 §4). Roles are data; this is
 * the one table that turns a role's category into patient scope. Categories absent here
 * (developer, integrator, research) reach no patient at all.
 */
export const categoryScopes: Readonly<Record<string, PatientScope | null>> = {
  admin: 'all',
  clinician: 'care-team',
  patient: 'self',
  developer: null,
  integrator: null,
  research: null
}

/** Scopes of a set of role categories. */
export function scopesOf (categories: Iterable<string>): ReadonlySet<PatientScope> {
  const scopes = new Set<PatientScope>()
  for (const c of categories) {
    const scope = categoryScopes[c]
    if (scope !== null && scope !== undefined) scopes.add(scope)
  }
  return scopes
}


/** Who made this request and from where, for its audit row. */
export function auditActor (request: FastifyRequest): Pick<AuditEntry, 'actorId' | 'actorKind' | 'role' | 'sourceAddress' | 'requestId' | 'tokenCreator' | 'clientRequestId'> {
  const p = request.principal
  return {
    actorId: p === null ? null : p.userId ?? p.tokenId,
    actorKind: p === null ? 'system' : p.kind,
    role: p?.role ?? null,
    sourceAddress: request.ip,
    requestId: request.id,
    tokenCreator: p?.tokenCreator ?? null,
    clientRequestId: request.clientRequestId
  }
}

/** Who did it, for granted_by / created_by / assigned_by columns: a user id or `token:<id>`. */
export function actorOf (request: FastifyRequest): string {
  const p = request.principal as Principal
  return p.userId ?? `token:${p.tokenId}`
}

export interface Decision {
  allowed: boolean
  /** Set when the access rests on a break-glass grant. */
  breakGlassReason: string | null
}

export interface AccessPolicyDeps {
  people: PeopleStore
  patients: PatientStore
  audit: AuditLog
  now?: () => Date
}

/**
 * The relationship check (issue 3 §4): admins see every patient; a patient sees only
 * themselves; clinicians see their care team's patients (an active on-call shift for a patient's
 * care team counts, for its duration) and those they hold an unexpired break-glass grant for; developers, device integrators and ML scientists see none.
 *
 * A refusal is 404 VIGIL_ERR_UNKNOWN_PATIENT, the answer for a patient that does not exist,
 * so patient ids cannot be probed; a principal whose role lacks the route's permission gets
 * 403 from the auth hook before this runs. Every `require` and `requireAnd` appends exactly one audit row.
 */
export function createPatientAccessPolicy ({ people, patients, audit, now = () => new Date() }: AccessPolicyDeps): PatientAccessPolicy & {
  decide (principal: Principal, patientId: string): Promise<Decision>
} {
  async function decide (principal: Principal, patientId: string): Promise<Decision> {
    const denied: Decision = { allowed: false, breakGlassReason: null }
    const s = principal.patientScopes
    if (s.size === 0) return denied
    const self = s.has('self') && principal.userId === patientId
    const clinician = !s.has('all') && !self && s.has('care-team') ? principal.userId : null
    // A clinician's relationship is read alongside the patient's existence (one round trip, not two);
    // it decides nothing for a patient that does not exist.
    const [patient, relationship] = await Promise.all([
      patients.get(patientId),
      clinician === null ? null : people.relationship(clinician, patientId, now())
    ])
    if (patient === null) return denied
    if (s.has('all') || self) return { allowed: true, breakGlassReason: null }
    if (relationship === null) return denied
    if (relationship.careTeam) return { allowed: true, breakGlassReason: null }
    if (relationship.breakGlassReason !== null) return { allowed: true, breakGlassReason: relationship.breakGlassReason }
    return denied
  }

  async function decideFor (request: FastifyRequest, patientId: string): Promise<Decision> {
    const principal = request.principal
    return principal === null ? { allowed: false, breakGlassReason: null } : await decide(principal, patientId)
  }

  async function auditDecision (request: FastifyRequest, patientId: string, access: PatientAccessRequest, decision: Decision): Promise<void> {
    await audit.record({
      ...auditActor(request),
      patientId,
      action: access.action,
      fields: access.fields ?? [],
      outcome: decision.allowed ? 'allowed' : 'denied',
      breakGlassReason: decision.breakGlassReason,
      details: access.details ?? null
    })
  }

  return {
    decide,
    async require (request: FastifyRequest, patientId: string, access: PatientAccessRequest): Promise<void> {
      const decision = await decideFor(request, patientId)
      await auditDecision(request, patientId, access, decision)
      if (!decision.allowed) throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    },
    async requireAnd<T> (request: FastifyRequest, patientId: string, access: PatientAccessRequest, read: () => Promise<T>): Promise<T> {
      const decision = await decideFor(request, patientId)
      if (!decision.allowed) {
        await auditDecision(request, patientId, access, decision)
        throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
      }
      // Both settle before anything is answered: a read's failure does not leave the row's write running unobserved.
      const [recorded, result] = await Promise.allSettled([auditDecision(request, patientId, access, decision), Promise.resolve().then(read)])
      if (recorded.status === 'rejected') throw recorded.reason
      if (result.status === 'rejected') throw result.reason
      return result.value
    },
    async visiblePatients (principal: Principal): Promise<ReadonlySet<string> | null> {
      const s = principal.patientScopes
      if (s.has('all')) return null
      const visible = new Set<string>()
      if (principal.userId !== null) {
        if (s.has('self') && await patients.get(principal.userId) !== null) visible.add(principal.userId)
        if (s.has('care-team')) for (const id of await people.patientsOf(principal.userId, now())) visible.add(id)
      }
      return visible
    },
    async canSee (principal: Principal, patientId: string): Promise<boolean> {
      return (await decide(principal, patientId)).allowed
    }
  }
}
