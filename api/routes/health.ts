import { Type } from '@fastify/type-provider-typebox'
import type { FastifyBaseLogger } from 'fastify'
import type { ApiDeps, ApiInstance } from './route-deps.ts'

const CHECK_TIMEOUT_MS = 2000

const CheckStatus = Type.Union([Type.Literal('ok'), Type.Literal('failed')])
const Health = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded'), Type.Literal('unavailable')]),
  checks: Type.Record(Type.String(), CheckStatus)
})

async function runCheck (name: string, check: () => Promise<void>, log: FastifyBaseLogger): Promise<'ok' | 'failed'> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS)
  })
  try {
    await Promise.race([check(), timeout])
    return 'ok'
  } catch (err) {
    // Details go to the log only: /healthz is public.
    log.warn({ check: name, err }, 'health check failed')
    return 'failed'
  } finally {
    clearTimeout(timer)
  }
}

export interface HealthDeps extends Pick<ApiDeps, 'db' | 'readings' | 'healthChecks' | 'degradingHealthChecks' | 'diskReserve'> {
  /** True while the API sheds load (event loop or memory past its limit). */
  isUnderPressure: () => boolean
}

export function healthRoutes (app: ApiInstance, { db, readings, healthChecks = {}, degradingHealthChecks = {}, diskReserve, isUnderPressure }: HealthDeps): void {
  const checks: Record<string, () => Promise<void>> = {
    postgres: async () => { await db.pool.query('SELECT 1') },
    readings: () => readings.ping(),
    // /healthz itself is never shed: while other routes answer 503 it says why, here.
    load: async () => { if (isUnderPressure()) throw new Error('shedding load: event loop or memory past its limit') }
  }
  if (diskReserve !== undefined) {
    checks.disk = async () => { if (diskReserve.low()) throw new Error('data directory below its free-space reserve: writes refused') }
  }
  for (const [name, check] of Object.entries(healthChecks)) {
    if (Object.hasOwn(checks, name)) throw new Error(`health check name ${name} is taken`)
    checks[name] = check
  }
  for (const [name, check] of Object.entries(degradingHealthChecks)) {
    if (Object.hasOwn(checks, name)) throw new Error(`health check name ${name} is taken`)
    checks[name] = check
  }
  const degrading = new Set(Object.keys(degradingHealthChecks))

  app.get('/healthz', {
    // Its own address budget (api/plugins/rate-limits.ts): a container healthcheck must not get 429.
    config: { shed: false, budget: 'operations' },
    schema: {
      tags: ['operations'],
      summary: 'Liveness and dependencies (no auth)',
      description: `Each check has ${CHECK_TIMEOUT_MS} ms. 503 when any fails; reasons are logged, not returned. ` +
        '`load` fails while the API sheds load (other routes answer 503); this route is never shed. ' +
        '`disk` (when watched) fails while the data directory is below its free-space reserve (publishes and writes refused). ' +
        '`redis` (when clustered, REDIS_URL) failing makes the status `degraded` with 200: ingest and this process\'s API go on, cross-process features wait for it.',
      security: [],
      response: { 200: Health, 503: Health }
    }
  }, async (request, reply) => {
    const names = Object.keys(checks)
    const results = await Promise.all(names.map((name) => runCheck(name, checks[name]!, request.log)))
    const report: Record<string, 'ok' | 'failed'> = {}
    names.forEach((name, i) => { report[name] = results[i]! })
    const healthy = names.every((name, i) => results[i] === 'ok' || degrading.has(name))
    const whole = results.every((r) => r === 'ok')
    reply.code(healthy ? 200 : 503).header('cache-control', 'no-store')
    return { status: !healthy ? 'unavailable' as const : whole ? 'ok' as const : 'degraded' as const, checks: report }
  })
}
