import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TokenRole } from './api-tokens.ts'
import { isAccessToken } from './sessions.ts'
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

// ---------------------------------------------------------------------------------------
// The web app's session cookie (docs/web-app.md). A browser holds its login session's access
// token in an HttpOnly, SameSite=Strict cookie (Secure and __Host- under TLS), never in script
// reach. Only session access tokens ride in it: an API token in a cookie is ignored. A request
// that carries an Authorization header is judged on that header alone.
// ---------------------------------------------------------------------------------------

/** RFC 6265bis §4.1.3.2: a __Host- cookie needs Secure, Path=/ and no Domain, so only TLS gets the prefix. */
export function sessionCookieName (secure: boolean): string {
  return secure ? '__Host-vigil_session' : 'vigil_session'
}

const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS'])
const COOKIE_VALUE = /^[\x21-\x7E]{1,512}$/

/** One cookie's value from the Cookie header (RFC 6265 §5.4), or null. */
export function cookieValue (request: FastifyRequest, name: string): string | null {
  const header = request.headers.cookie
  if (typeof header !== 'string' || header.length > 8192) return null
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq === -1 || part.slice(0, eq).trim() !== name) continue
    const value = part.slice(eq + 1).trim()
    return COOKIE_VALUE.test(value) ? value : null
  }
  return null
}

/**
 * The CSRF token of a cookie session: derived from the access token (a keyed digest the page
 * gets from /v1/auth/browser/*, which another origin cannot read). It changes with every
 * refresh, needs no server state, and holds no secret the cookie does not already hold.
 */
export function csrfTokenFor (accessToken: string): string {
  return createHash('sha256').update('vigil-csrf\0').update(accessToken).digest('base64url')
}

/** Where the request's credential came from: the Authorization header, else the session cookie. */
export function credentialOf (request: FastifyRequest): { secret: string, via: 'bearer' | 'cookie' } | null {
  const authorization = request.headers.authorization
  if (authorization !== undefined) {
    const match = BEARER.exec(authorization)
    return match === null ? null : { secret: match[1]!, via: 'bearer' }
  }
  const cookie = cookieValue(request, sessionCookieName(request.protocol === 'https'))
  return cookie !== null && isAccessToken(cookie) ? { secret: cookie, via: 'cookie' } : null
}

/**
 * A cookie rides along on requests another site makes the browser send, so a state-changing
 * request authenticated by the cookie must prove it comes from Vigil's own page: the
 * X-CSRF-Token header (which a cross-site form cannot set, and a cross-origin fetch cannot
 * without a preflight Vigil never answers) must match, and a browser's Sec-Fetch-Site, when
 * present, must say same-origin (OWASP CSRF Prevention Cheat Sheet: synchronizer token and
 * Fetch Metadata). SameSite=Strict is the first line; this is the second.
 */
export function refuseCrossSite (request: FastifyRequest, accessToken: string | null): void {
  const site = request.headers['sec-fetch-site']
  if (site !== undefined && site !== 'same-origin') throw new VigilError('VIGIL_ERR_CSRF', 'cross-site requests are refused')
  if (accessToken === null) return
  const sent = request.headers['x-csrf-token']
  const expected = Buffer.from(csrfTokenFor(accessToken))
  if (typeof sent !== 'string' || sent.length !== expected.length || !timingSafeEqual(Buffer.from(sent), expected)) {
    throw new VigilError('VIGIL_ERR_CSRF', 'the X-CSRF-Token header is missing or wrong: reload the page')
  }
}

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
    const credential = credentialOf(request)
    // A database outage throws here and becomes a 503: it is not the caller's failure.
    const principal = credential === null ? null : await authenticate(credential.secret)
    if (principal === null) {
      await budgets.chargeAddress(request, reply)
      throw unauthenticated(reply)
    }
    request.principal = principal
    await budgets.chargeToken(request, reply)
    if (credential!.via === 'cookie' && !SAFE_METHODS.has(request.method)) refuseCrossSite(request, credential!.secret)
    const required = request.routeOptions.config.permission
    if (required === undefined || !request.principal.permissions.has(required)) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'this token is not allowed to do this')
    }
  })
}
