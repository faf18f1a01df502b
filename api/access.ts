import type pg from 'pg'
import type { ApiTokenStore } from '../store/api-tokens.ts'
import { createAuditLog } from '../store/audit-log.ts'
import type { AuditLogStore } from '../store/audit-log.ts'
import type { PatientStore } from '../store/patients.ts'
import { createPeopleStore } from '../store/people.ts'
import type { PeopleStore } from '../store/people.ts'
import { PASSWORD_SCRYPT } from '../store/passwords.ts'
import type { ScryptCost } from '../store/passwords.ts'
import { createSessionStore, isAccessToken, sessionDefaults } from '../store/sessions.ts'
import type { SessionSettings, SessionStore } from '../store/sessions.ts'
import { createPatientAccessPolicy, scopesOf } from './access-policy.ts'
import { permissions } from './auth.ts'
import type { Authenticate, Permission } from './auth.ts'
import type { PatientAccessPolicy } from './patient-access.ts'

export interface AccessSettings extends SessionSettings {
  /** How long a break-glass grant lasts. */
  breakGlassMinutes: number
  /** Login attempts per minute from one address (IPv6: one /64), refused before any password is hashed. */
  loginsPerAddressPerMinute: number
  /** Login attempts per minute on one email (known or not, any case), refused before any password is hashed. */
  loginsPerAccountPerMinute: number
}

export const accessDefaults: Readonly<AccessSettings> = { ...sessionDefaults, breakGlassMinutes: 60, loginsPerAddressPerMinute: 20, loginsPerAccountPerMinute: 10 }

/** People, sessions, audit trail and the two decisions built on them; buildApi takes it as `deps.access`. */
export interface Access {
  people: PeopleStore
  sessions: SessionStore
  audit: AuditLogStore
  /** Bearer secret → principal (sessions and API tokens), on the stores given to createAccess. */
  authenticate: Authenticate
  patientAccess: PatientAccessPolicy
  /** The same two on other patient/token stores (buildApi binds them to its own deps). */
  bind (stores: { patients: PatientStore, tokens: ApiTokenStore }): { authenticate: Authenticate, patientAccess: PatientAccessPolicy }
  settings: AccessSettings
  /** The scrypt cost for new passwords (OWASP's minimum; tests lower it). */
  passwordCost: ScryptCost
  now: () => Date
}

export interface AccessOptions {
  pool: pg.Pool
  patients: PatientStore
  tokens: ApiTokenStore
  settings?: Partial<AccessSettings>
  /** The clock for session expiry, lockout, care-team periods and break-glass; tests move it. */
  now?: () => Date
  passwordCost?: ScryptCost
}

const known = new Set<string>(permissions)

function toPermissions (names: Iterable<string>): Set<Permission> {
  const out = new Set<Permission>()
  for (const n of names) if (known.has(n)) out.add(n as Permission)
  return out
}

/**
 * Wires people, roles, sessions and the audit log on one pool. Authentication takes login
 * session access tokens (`vga_…`) and API tokens (everything else, including
 * VIGIL_ADMIN_TOKEN); both get the union of their roles' permissions from role_definitions,
 * so a custom role or a changed definition applies at the next request.
 */
export function createAccess (options: AccessOptions): Access {
  const now = options.now ?? (() => new Date())
  const settings: AccessSettings = { ...accessDefaults, ...options.settings }
  const people = createPeopleStore(options.pool)
  const sessions = createSessionStore(options.pool, settings, now)
  const audit = createAuditLog(options.pool)

  const bind = (stores: { patients: PatientStore, tokens: ApiTokenStore }) => ({
    authenticate: authenticateWith(stores.tokens),
    patientAccess: createPatientAccessPolicy({ people, patients: stores.patients, audit, now })
  })

  const authenticateWith = (tokens: ApiTokenStore): Authenticate => async (bearer) => {
    if (isAccessToken(bearer)) {
      const session = await sessions.authenticate(bearer)
      if (session === null) return null
      const roleIds = session.roles.map((r) => r.id).sort()
      return {
        kind: 'user',
        tokenId: session.sessionId,
        // Not the display name: principals reach logs, and a patient's name is PHI.
        name: `user ${session.userId}`,
        role: roleIds.join(','),
        roles: roleIds,
        userId: session.userId,
        permissions: toPermissions(session.roles.flatMap((r) => r.permissions)),
        patientScopes: scopesOf(session.roles.map((r) => r.category))
      }
    }
    const token = await tokens.authenticate(bearer)
    if (token === null) return null
    const role = await people.getRole(token.role)
    return {
      ...token,
      kind: 'token',
      roles: [token.role],
      userId: null,
      permissions: toPermissions(role?.permissions ?? []),
      patientScopes: scopesOf(role === null ? [] : [role.category])
    }
  }

  const { authenticate, patientAccess } = bind(options)
  return { people, sessions, audit, authenticate, patientAccess, bind, settings, passwordCost: options.passwordCost ?? PASSWORD_SCRYPT, now }
}
