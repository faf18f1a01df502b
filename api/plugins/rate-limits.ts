import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'
import type { RequestBudgets } from '../../access/auth.ts'

// The plugin's in-memory store counts in fixed windows that start at a client's first
// request: a client can fit up to twice its limit across a window boundary, never more.
const WINDOW_MS = 60_000

// Health and metrics have their own per-address budget, apart from the public one: a flood of
// /docs or 404s from one address (or from a proxy's address when TRUST_PROXY is unset) must not
// make the container healthcheck or the Prometheus scrape see 429 (issue 16). Both cost little
// but are not free (/healthz asks the database and the reading store; /metrics renders every
// series), so they are still limited: a healthcheck every 15 s and a scrape every 15 s use 8 a
// minute; 600 leaves room for several monitors behind one address.
export const OPERATIONS_REQUESTS_PER_MINUTE = 600

declare module 'fastify' {
  interface FastifyContextConfig {
    /** 'operations': the route is charged to the per-address operations budget, not the public one (health, metrics). */
    budget?: 'operations'
  }
}

export type { RequestBudgets } from '../../access/auth.ts'

export interface RequestBudgetLimits {
  /** Requests per minute per API token. */
  perTokenPerMinute: number
  /** Requests per minute per client address without a valid token. */
  perAddressPerMinute: number
}

type Limiter = ReturnType<FastifyInstance['createRateLimit']>
type Counted = Extract<Awaited<ReturnType<Limiter>>, { isAllowed: false }>

export async function registerRequestBudgets (app: FastifyInstance, limits: RequestBudgetLimits): Promise<RequestBudgets> {
  // global: false: the plugin adds no hooks of its own; the hooks below charge the budgets.
  await app.register(rateLimit, { global: false, timeWindow: WINDOW_MS })

  // The plugin's default key: request.ip, IPv6 masked to its /64 (one subscriber's
  // allocation, so rotating addresses inside it does not buy a fresh budget).
  const byAddress = app.createRateLimit({ max: limits.perAddressPerMinute, timeWindow: WINDOW_MS })
  const byAddressForOperations = app.createRateLimit({
    max: OPERATIONS_REQUESTS_PER_MINUTE,
    // Each limiter made here has its own store (its own counts), keyed like byAddress.
    timeWindow: WINDOW_MS
  })
  const byToken = app.createRateLimit({
    max: limits.perTokenPerMinute,
    timeWindow: WINDOW_MS,
    keyGenerator: (request) => {
      if (request.principal === null) throw new Error('a token budget is charged only after authentication')
      return request.principal.tokenId
    }
  })

  async function charge (limiter: Limiter, request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const counted = await limiter(request)
    if (counted.isAllowed) return
    if (counted.isExceeded) throw rateLimited(reply, counted)
    reply.header('x-ratelimit-limit', counted.max)
      .header('x-ratelimit-remaining', counted.remaining)
      .header('x-ratelimit-reset', counted.ttlInSeconds)
  }

  return {
    chargeAddress: (request, reply) => charge(request.routeOptions.config.budget === 'operations' ? byAddressForOperations : byAddress, request, reply),
    chargeToken: (request, reply) => charge(byToken, request, reply),
    async refuseExhaustedAddress (request, reply) {
      const state = await byAddress(request, { increment: false })
      if (!state.isAllowed && state.isExceeded) throw rateLimited(reply, state)
    }
  }
}

function rateLimited (reply: FastifyReply, counted: Counted): VigilError {
  // RFC 6585 §4: a 429 may say how long to wait; RFC 9110 §10.2.3: Retry-After in seconds.
  const seconds = Math.max(1, counted.ttlInSeconds)
  reply.header('retry-after', seconds)
    .header('x-ratelimit-limit', counted.max)
    .header('x-ratelimit-remaining', 0)
    .header('x-ratelimit-reset', seconds)
  return new VigilError('VIGIL_ERR_RATE_LIMITED', `too many requests, retry in ${seconds} s`)
}
