import { Type } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Access } from '../../access/access.ts'
import { cookieValue, csrfTokenFor, refuseCrossSite, sessionCookieName } from '../../access/auth.ts'
import type { Authenticate } from '../../access/auth.ts'
import type { LoginBudget } from '../../access/login-budget.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { LoginRequest } from '../schemas/access.ts'
import { Uuid, errorResponses } from '../schemas/common.ts'
import type { ApiInstance } from './route-deps.ts'
import { logIn } from './sessions.ts'

// The refresh token's cookie reaches only these routes (Path), so no other request carries it.
const REFRESH_PATH = '/v1/auth/browser'

function refreshCookieName (secure: boolean): string {
  // __Secure- (RFC 6265bis §4.1.3.1) allows a Path; __Host- does not.
  return secure ? '__Secure-vigil_refresh' : 'vigil_refresh'
}

const BrowserSession = Type.Object({
  userId: Uuid,
  roles: Type.Array(Type.String(), { description: 'Role definition ids held' }),
  permissions: Type.Array(Type.String()),
  patientScopes: Type.Array(Type.String(), { description: 'all, care-team, self' }),
  csrfToken: Type.String({ description: 'Send as X-CSRF-Token on every state-changing request; keep it in memory only' }),
  expiresIn: Type.Integer({ description: 'Seconds until the access cookie expires: refresh before' }),
  idleSeconds: Type.Integer({ description: 'The session ends after this long without use; the page signs out after this long without input' })
})

/**
 * The web app's sign-in (docs/web-app.md): the same sessions as /v1/auth/login, but the tokens
 * travel in HttpOnly, SameSite=Strict cookies (Secure under TLS) that page script cannot read,
 * and the page gets only a CSRF token to keep in memory. Public routes under /v1/auth/browser.
 */
export function browserSessionRoutes (app: ApiInstance, { access, authenticate, budget }: { access: Access, authenticate: Authenticate, budget: LoginBudget }): void {
  const { sessions, settings } = access

  function setCookies (request: FastifyRequest, reply: FastifyReply, tokens: { accessToken: string, refreshToken: string } | null): void {
    const secure = request.protocol === 'https'
    const attributes = `HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`
    // No Max-Age: the cookies go with the browser session; the server ends the session itself.
    const clear = tokens === null ? '; Max-Age=0' : ''
    reply.header('set-cookie', [
      `${sessionCookieName(secure)}=${tokens?.accessToken ?? ''}; Path=/; ${attributes}${clear}`,
      `${refreshCookieName(secure)}=${tokens?.refreshToken ?? ''}; Path=${REFRESH_PATH}; ${attributes}${clear}`
    ])
  }

  async function describe (accessToken: string, expiresIn: number) {
    const principal = await authenticate(accessToken)
    if (principal === null || principal.userId === null) throw new VigilError('VIGIL_ERR_UNAUTHENTICATED', 'sign in again')
    return {
      userId: principal.userId,
      roles: [...principal.roles],
      permissions: [...principal.permissions],
      patientScopes: [...principal.patientScopes],
      csrfToken: csrfTokenFor(accessToken),
      expiresIn,
      idleSeconds: settings.sessionIdleSeconds
    }
  }

  const common = { tags: ['auth'], security: [] }

  app.post('/browser/login', {
    schema: {
      ...common,
      summary: 'Web app sign-in: sets the session cookies',
      description: 'As POST /v1/auth/login (same budgets, lockout and one answer for every failure), but the tokens are set as ' +
        'HttpOnly SameSite=Strict cookies and the body carries only what the page needs, with its CSRF token.',
      body: LoginRequest,
      response: { 200: BrowserSession, ...errorResponses(413) }
    }
  }, async (request, reply) => {
    refuseCrossSite(request, null)
    const tokens = await logIn(access, budget, request.body, request, reply, 'browser')
    setCookies(request, reply, tokens)
    return await describe(tokens.accessToken, tokens.expiresIn)
  })

  app.get('/browser/session', {
    schema: {
      ...common,
      summary: 'Web app: the signed-in session (from its cookie) and its CSRF token',
      description: 'For a page (re)load. 401 when the access cookie is missing or expired: POST /v1/auth/browser/refresh, then sign in.',
      response: { 200: BrowserSession, ...errorResponses() }
    }
  }, async (request) => {
    refuseCrossSite(request, null)
    const token = cookieValue(request, sessionCookieName(request.protocol === 'https'))
    if (token === null) throw new VigilError('VIGIL_ERR_UNAUTHENTICATED', 'not signed in')
    return await describe(token, settings.accessTokenTtlSeconds)
  })

  app.post('/browser/refresh', {
    schema: {
      ...common,
      summary: 'Web app: new session cookies for the refresh cookie',
      description: 'Rotates both tokens as POST /v1/auth/refresh does (a reused refresh token ends the session).',
      response: { 200: BrowserSession, ...errorResponses() }
    }
  }, async (request, reply) => {
    refuseCrossSite(request, null)
    const refreshToken = cookieValue(request, refreshCookieName(request.protocol === 'https'))
    const tokens = refreshToken === null ? null : await sessions.refresh(refreshToken)
    if (tokens === null) {
      setCookies(request, reply, null)
      throw new VigilError('VIGIL_ERR_UNAUTHENTICATED', 'the session is over: sign in again')
    }
    setCookies(request, reply, tokens)
    return await describe(tokens.accessToken, tokens.expiresIn)
  })

  app.post('/browser/logout', {
    schema: {
      ...common,
      summary: 'Web app: sign out (ends the session, clears the cookies)',
      description: 'Always 204. Needs no CSRF token: signing out is what an expired page must still be able to do.',
      response: { 204: Type.Null({ description: 'Signed out' }), ...errorResponses() }
    }
  }, async (request, reply) => {
    refuseCrossSite(request, null)
    const secure = request.protocol === 'https'
    for (const token of [cookieValue(request, sessionCookieName(secure)), cookieValue(request, refreshCookieName(secure))]) {
      if (token !== null) await sessions.logout(token)
    }
    setCookies(request, reply, null)
    return await reply.code(204).send(null)
  })
}
