import { Type } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Access } from '../../access/access.ts'
import type { IssuedTokens } from '../../access/sessions.ts'
import { LoginRequest, RefreshRequest, TokenPair } from '../schemas/access.ts'
import type { ApiInstance } from './route-deps.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { createLoginBudget } from '../../access/login-budget.ts'
import type { LoginBudget } from '../../access/login-budget.ts'
import { errorResponses } from '../schemas/common.ts'

const BEARER = /^Bearer +([\x21-\x7E]{1,512})$/i

/**
 * Login, refresh and logout: public routes (no bearer needed to log in), charged to the
 * caller's address budget like every public route.
 */
export function sessionRoutes (app: ApiInstance, { access, budget = loginBudgetFor(access) }: { access: Access, budget?: LoginBudget }): void {
  const { sessions } = access

  app.post('/login', {
    schema: {
      tags: ['auth'],
      summary: 'Log in with email + password',
      description: `Returns an access token (${access.settings.accessTokenTtlSeconds} s) and a single-use refresh token. ` +
        `${access.settings.loginMaxFailures} wrong passwords in a row lock the account for ${access.settings.loginLockoutSeconds} s. ` +
        'Every failure is the same 401 VIGIL_ERR_LOGIN_FAILED: it never says whether the email exists or the account is locked. ' +
        `More than ${access.settings.loginsPerAddressPerMinute} attempts a minute from one address, or ${access.settings.loginsPerAccountPerMinute} on one email, ` +
        'get 429 VIGIL_ERR_RATE_LIMITED with Retry-After, before the password is checked.',
      security: [],
      body: LoginRequest,
      response: { 200: TokenPair, ...errorResponses(413) }
    }
  }, async (request, reply) => {
    const tokens = await logIn(access, budget, request.body, request, reply, 'api')
    const { accessToken, refreshToken, expiresIn, userId } = tokens
    return { tokenType: 'Bearer' as const, accessToken, refreshToken, expiresIn, userId }
  })

  app.post('/refresh', {
    schema: {
      tags: ['auth'],
      summary: 'Trade a refresh token for a new token pair',
      description: 'Each refresh token works once. Presenting a used one again ends the whole session (it was copied). ' +
        `A session unused for ${access.settings.sessionIdleSeconds} s, or older than ${access.settings.sessionMaxSeconds} s, cannot be refreshed.`,
      security: [],
      body: RefreshRequest,
      response: { 200: TokenPair, ...errorResponses(413) }
    }
  }, async (request, reply) => {
    const tokens = await sessions.refresh(request.body.refreshToken)
    if (tokens === null) {
      reply.header('www-authenticate', 'Bearer realm="vigil"')
      throw new VigilError('VIGIL_ERR_UNAUTHENTICATED', 'the refresh token is not valid: log in again')
    }
    const { accessToken, refreshToken, expiresIn, userId } = tokens
    return { tokenType: 'Bearer' as const, accessToken, refreshToken, expiresIn, userId }
  })

  app.post('/logout', {
    schema: {
      tags: ['auth'],
      summary: 'End the session',
      description: 'Send the access token (Authorization: Bearer) or the refresh token in the body; every token of the session stops working. Always 204.',
      security: [],
      // No body schema: a logout with only the Authorization header has no body at all.
      response: { 204: Type.Null({ description: 'Logged out' }), ...errorResponses(413) }
    }
  }, async (request, reply) => {
    const bearer = BEARER.exec(request.headers.authorization ?? '')?.[1]
    const body = request.body as { refreshToken?: unknown } | null | undefined
    const refreshToken = typeof body?.refreshToken === 'string' && body.refreshToken.length <= 512 ? body.refreshToken : undefined
    for (const token of [bearer, refreshToken]) {
      if (token !== undefined) await sessions.logout(token)
    }
    return await reply.code(204).send(null)
  })
}

/**
 * Email + password login, shared by POST /v1/auth/login and the web app's sign-in: the budget
 * is charged before the password is hashed (a flood costs a map lookup, not scrypt), and every
 * failure is the same 401. The reason is logged for operators; the email never is (it
 * identifies a person).
 */
export async function logIn (access: Access, budget: LoginBudget, credentials: { email: string, password: string }, request: FastifyRequest, reply: FastifyReply, via: 'api' | 'browser'): Promise<IssuedTokens> {
  const admission = budget.admit(request.ip, credentials.email)
  if (!admission.admitted) {
    request.log.info({ budget: admission.budget }, 'login refused: budget spent')
    reply.header('retry-after', admission.retryAfterSeconds)
    throw new VigilError('VIGIL_ERR_RATE_LIMITED', `too many login attempts, retry in ${admission.retryAfterSeconds} s`)
  }
  const outcome = await access.sessions.login(credentials.email, credentials.password)
  if (!outcome.ok) {
    request.log.info({ reason: outcome.reason }, 'login refused')
    if (outcome.reason === 'just-locked') request.log.warn('account locked after repeated failed logins')
    throw new VigilError('VIGIL_ERR_LOGIN_FAILED', 'the email or password is wrong, or the account is locked or inactive')
  }
  request.log.info({ userId: outcome.tokens.userId, sessionId: outcome.tokens.sessionId, ...(via === 'browser' ? { via } : {}) }, 'login')
  return outcome.tokens
}

/** One login budget per API: the web app's sign-in (browser-session.ts) spends the same one. */
export function loginBudgetFor (access: Access): LoginBudget {
  return createLoginBudget({ perAddressPerMinute: access.settings.loginsPerAddressPerMinute, perAccountPerMinute: access.settings.loginsPerAccountPerMinute })
}
