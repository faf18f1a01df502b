import type pg from 'pg'
import type { ApiTokenStore, TokenPrincipal } from './api-tokens.ts'
import { createAuditLog } from './audit-log.ts'
import type { Keyring } from '../crypto/field-encryption.ts'
import type { AuditLogStore } from './audit-log.ts'
import type { PatientStore } from '../patients/patients.ts'
import { createPeopleStore } from './people.ts'
import type { PeopleStore } from './people.ts'
import { PASSWORD_SCRYPT } from './passwords.ts'
import type { ScryptCost } from './passwords.ts'
import { createSessionStore, isAccessToken, sessionDefaults } from './sessions.ts'
import type { SessionSettings, SessionStore } from './sessions.ts'
import { createPatientAccessPolicy, scopesOf } from './access-policy.ts'
import { permissions } from './auth.ts'
import type { Authenticate, PatientScope, Permission, Principal } from './auth.ts'
import type { PatientAccessPolicy } from './patient-access.ts'
import { defaults } from '../config/schema/defaults.ts'

export interface AccessSettings extends SessionSettings {
  /** How long a break-glass grant lasts. */
  breakGlassMinutes: number
  /** Break-glass grants one clinician may take in any hour; more are refused (429, audited). */
  breakGlassGrantsPerHour: number
  /** Login attempts per minute from one address (IPv6: one /64), refused before any password is hashed. */
  loginsPerAddressPerMinute: number
  /** Login attempts per minute on one email (known or not, any case), refused before any password is hashed. */
  loginsPerAccountPerMinute: number
}

// 10 break-glass grants an hour: an emergency shift may open several patients; a clinician browsing records
// through break-glass meets the limit within minutes, and each refusal is in the audit trail.
export const accessDefaults: Readonly<AccessSettings> = {
  ...sessionDefaults,
  breakGlassMinutes: defaults.VIGIL_BREAK_GLASS_MINUTES,
  breakGlassGrantsPerHour: defaults.VIGIL_BREAK_GLASS_PER_HOUR,
  loginsPerAddressPerMinute: defaults.VIGIL_LOGIN_RATE_PER_ADDRESS,
  loginsPerAccountPerMinute: defaults.VIGIL_LOGIN_RATE_PER_ACCOUNT
}

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
  /** The principal a user would be when signed in now (roles as they stand); null when unknown or deactivated. */
  principalOfUser (userId: string): Promise<Principal | null>
  settings: AccessSettings
  /** The scrypt cost for new passwords (VIGIL_PASSWORD_SCRYPT_LOG2_N; OWASP's minimum by default). */
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
  /** Encrypts break-glass reasons (grants and audit rows). */
  keyring: Keyring
}

const known = new Set<string>(permissions)

const MAX_CREATOR_CHAIN = 8

interface Limits { permissions: Set<Permission>, patientScopes: ReadonlySet<PatientScope> }

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
  const people = createPeopleStore(options.pool, options.keyring)
  const passwordCost = options.passwordCost ?? PASSWORD_SCRYPT
  const sessions = createSessionStore(options.pool, settings, now, passwordCost)
  const audit = createAuditLog(options.pool, options.keyring)

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
    const limits = await tokenLimits(tokens, token, 0)
    if (limits === null) return null
    return {
      tokenId: token.tokenId,
      name: token.name,
      role: token.role,
      kind: 'token',
      roles: [token.role],
      userId: null,
      permissions: limits.permissions,
      patientScopes: limits.patientScopes,
      tokenCreator: token.createdBy
    }
  }

  /**
   * A token's permissions and patient scopes: its role's, cut down to what its creator holds
   * now (issue 11 §3), following `token:<id>` creators up the chain. Null when a creator is
   * deactivated, unknown or revoked: the token is then not valid at all (401). A token with no
   * creator (VIGIL_ADMIN_TOKEN, tokens made before creators were recorded) has its role's.
   */
  async function tokenLimits (tokens: ApiTokenStore, token: TokenPrincipal, depth: number): Promise<Limits | null> {
    // Read with the token where authenticate did (one round trip fewer before every token request).
    const role = token.roleGrant !== undefined ? token.roleGrant : await people.getRole(token.role)
    const own: Limits = {
      permissions: toPermissions(role?.permissions ?? []),
      patientScopes: scopesOf(role === null ? [] : [role.category])
    }
    if (token.createdBy === null) return own
    const creator = await creatorLimits(tokens, token.createdBy, depth)
    if (creator === null) return null
    return {
      permissions: new Set([...own.permissions].filter((p) => creator.permissions.has(p))),
      // 'all' covers every narrower scope; a token has no user id, so only 'all' reaches anyone.
      patientScopes: new Set([...own.patientScopes].filter((s) => creator.patientScopes.has(s) || creator.patientScopes.has('all')))
    }
  }

  async function creatorLimits (tokens: ApiTokenStore, createdBy: string, depth: number): Promise<Limits | null> {
    // Chains are short (a person's token making a token); the cap only guards against a loop.
    if (depth >= MAX_CREATOR_CHAIN) return null
    if (createdBy.startsWith('token:')) {
      const parent = await tokens.getLive(createdBy.slice('token:'.length))
      return parent === null ? null : await tokenLimits(tokens, parent, depth + 1)
    }
    const grants = await people.currentGrants(createdBy)
    if (grants === null) return null
    return { permissions: toPermissions(grants.flatMap((r) => r.permissions)), patientScopes: scopesOf(grants.map((r) => r.category)) }
  }

  async function principalOfUser (userId: string): Promise<Principal | null> {
    const grants = await people.currentGrants(userId)
    if (grants === null) return null
    const roleIds = grants.map((r) => r.id).sort()
    return {
      kind: 'user',
      tokenId: '',
      name: `user ${userId}`,
      role: roleIds.join(','),
      roles: roleIds,
      userId,
      permissions: toPermissions(grants.flatMap((r) => r.permissions)),
      patientScopes: scopesOf(grants.map((r) => r.category))
    }
  }

  const { authenticate, patientAccess } = bind(options)
  return { people, sessions, audit, authenticate, patientAccess, bind, principalOfUser, settings, passwordCost, now }
}
