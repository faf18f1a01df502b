import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TokenRole } from './api-tokens.ts'
import { VigilError } from '../errors/catalogue.ts'

/** Every permission a route can require. Routes name one in `config.permission`. */
export const permissions = [
  'readings:read',
  'devices:read',
  'devices:write',
  'patients:read',
  'patients:write',
  'credentials:write',
  // People, roles and PHI (issue 3)
  'phi:read',
  'phi:write',
  'users:admin',
  'roles:admin',
  'care-teams:write',
  'audit:read',
  'break-glass',
  'export:deidentified',
  'tokens:write',
  // Alerting (issue 4)
  'alerts:read',
  'alerts:ack',
  'alerts:write',
  // Issue 13 §4: nurses comment without resolving; clinicians' notes are not shown to patients live
  'alerts:comment',
  'clinical-notes:read',
  'rules:read',
  'rules:write',
  'overrides:write',
  // Jobs and voice notes (issue 5)
  'jobs:read',
  'jobs:write',
  'voice-notes:read',
  'voice-notes:write',
  'voice-notes:release'
] as const

export type Permission = typeof permissions[number]

/** How far a principal reaches into patients; see access/access-policy.ts. */
export type PatientScope = 'all' | 'care-team' | 'self'

export interface Principal {
  /** The API token's id, or the login session's id for a user. */
  tokenId: string
  name: string
  /** The role (API token) or the user's roles joined with ',' (for logs and the audit trail). */
  role: TokenRole
  /** The person behind the request (a user's session); null for service/API tokens. */
  userId: string | null
  permissions: ReadonlySet<Permission>
  /** 'user' for a login session, 'token' for an API token. */
  kind: 'user' | 'token'
  /** Role definition ids held. */
  roles: readonly string[]
  /** Which patients the principal's roles reach (from the roles' categories). */
  patientScopes: ReadonlySet<PatientScope>
  /**
   * For an API token: who created it (a user id or `token:<id>`), whose current permissions
   * bound the token's; null for a user's session and for tokens without a creator
   * (VIGIL_ADMIN_TOKEN, tokens made before creators were recorded).
   */
  tokenCreator?: string | null
}

/**
 * Turns a bearer secret into a principal, or null when it is not valid. The API's auth hook,
 * the alert stream and MQTT subscribers for alerts all authenticate people through this.
 */
export type Authenticate = (bearer: string) => Promise<Principal | null>

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the auth hook on every authenticated route; null on public routes. */
    principal: Principal | null
    /**
     * The X-Request-Id the client sent (when short and harmless), kept apart from request.id,
     * which Vigil always generates: a client must not choose the id its audit rows carry.
     */
    clientRequestId: string | null
  }
  interface FastifyContextConfig {
    /** The permission an authenticated route requires. Mandatory under `/v1`. */
    permission?: Permission
  }
}

// RFC 6750 §2.1: "Bearer" 1*SP b64token. Any visible ASCII is taken (an operator's
// VIGIL_ADMIN_TOKEN may use characters b64token lacks; the token is only hashed), with a
// length cap so a huge header is not hashed and looked up.
const BEARER = /^Bearer +([\x21-\x7E]{1,512})$/i

function unauthenticated (reply: FastifyReply): VigilError {
  // RFC 6750 §3: a 401 names the scheme. Missing and wrong tokens get the same answer so
  // the response does not tell a caller which of the two it got wrong.
  reply.header('www-authenticate', 'Bearer realm="vigil"')
  return new VigilError('VIGIL_ERR_UNAUTHENTICATED', 'a valid bearer token is required')
}

/**
 * Two request budgets, charged where the caller's identity is known (api/plugins/rate-limits.ts
 * implements them):
 *
 * - per API token, for requests that authenticated;
 * - per client address, for everything else: public routes, unknown routes (404) and
 *   failed authentication. An address that has spent its budget is refused before its
 *   token is even looked up, so once a client hammering with bad tokens is limited its
 *   requests cost no database work.
 */
export interface RequestBudgets {
  /** Counts an unauthenticated request against its address; throws 429 past the limit. */
  chargeAddress (request: FastifyRequest, reply: FastifyReply): Promise<void>
  /** Throws 429 when the address has spent its budget, without charging it. */
  refuseExhaustedAddress (request: FastifyRequest, reply: FastifyReply): Promise<void>
  /** Counts an authenticated request against its token; throws 429 past the limit. */
  chargeToken (request: FastifyRequest, reply: FastifyReply): Promise<void>
}

/**
 * Makes every route registered in `app` (an encapsulated `/v1` context) require a bearer
 * token and the permission in its route config. A route without `config.permission` fails
 * at registration, so a new route cannot be public by accident. Authenticated requests
 * are charged to their token's budget, failed ones to the caller's address.
 */
export function requireAuthentication (app: FastifyInstance, authenticate: Authenticate, budgets: RequestBudgets): void {
  app.addHook('onRoute', (route) => {
    const permission = (route.config as { permission?: Permission } | undefined)?.permission
    if (permission === undefined || !permissions.includes(permission)) {
      throw new Error(`route ${route.method} ${route.url} must declare config.permission`)
    }
  })

  // onRequest: before the body is read, so unauthenticated callers cannot make us parse it.
  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    await budgets.refuseExhaustedAddress(request, reply)
    const match = BEARER.exec(request.headers.authorization ?? '')
    // A database outage throws here and becomes a 503: it is not the caller's failure.
    const principal = match === null ? null : await authenticate(match[1]!)
    if (principal === null) {
      await budgets.chargeAddress(request, reply)
      throw unauthenticated(reply)
    }
    request.principal = principal
    await budgets.chargeToken(request, reply)
    const required = request.routeOptions.config.permission
    if (required === undefined || !request.principal.permissions.has(required)) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'this token is not allowed to do this')
    }
  })
}
