import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

const { log, deps, app } = await startApiFixture(t, 'health test')

t.test('healthz is 200 when every check passes', async (t) => {
  const healthy = await buildApi({ ...deps, healthChecks: { spool: async () => {} } })
  t.teardown(() => healthy.close())
  const res = await healthy.inject({ method: 'GET', url: '/healthz' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'ok', checks: { postgres: 'ok', readings: 'ok', load: 'ok', spool: 'ok' } })
  t.equal(res.headers['cache-control'], 'no-store')
})

t.test('healthz is 503 when a check throws or hangs, without the reasons', async (t) => {
  const lines: string[] = []
  const log = pino({ level: 'info' }, { write: (line: string) => { lines.push(line) } })
  const sick = await buildApi({
    ...deps,
    log,
    healthChecks: {
      spool: async () => { throw new Error('spool directory /secret/path is read-only') },
      hangs: () => new Promise(() => {})
    }
  })
  t.teardown(() => sick.close())
  const started = Date.now()
  const res = await sick.inject({ method: 'GET', url: '/healthz' })
  t.ok(Date.now() - started < 5000, 'a hanging check times out')
  t.equal(res.statusCode, 503)
  t.same(res.json(), { status: 'unavailable', checks: { postgres: 'ok', readings: 'ok', load: 'ok', spool: 'failed', hangs: 'failed' } })
  t.notMatch(res.body, /secret|read-only/)
  t.match(lines.join(''), /read-only/, 'the reason is logged')
  t.match(lines.join(''), /timed out/)
})

t.test('healthz is 200 degraded when only a degrading check (Redis, clustered) fails', async (t) => {
  const degraded = await buildApi({ ...deps, degradingHealthChecks: { redis: async () => { throw new Error('connect ECONNREFUSED') } } })
  t.teardown(() => degraded.close())
  const res = await degraded.inject({ method: 'GET', url: '/healthz' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { status: 'degraded', checks: { postgres: 'ok', readings: 'ok', load: 'ok', redis: 'failed' } })
  const both = await buildApi({ ...deps, degradingHealthChecks: { redis: async () => { throw new Error('down') } }, healthChecks: { spool: async () => { throw new Error('down') } } })
  t.teardown(() => both.close())
  const worse = await both.inject({ method: 'GET', url: '/healthz' })
  t.equal(worse.statusCode, 503)
  t.equal(worse.json().status, 'unavailable')
})

t.test('healthz is 503 when the reading store is down', async (t) => {
  const down = await buildApi({ ...deps, readings: { ...deps.readings, ping: async () => { throw new Error('connect ECONNREFUSED') } } })
  t.teardown(() => down.close())
  const res = await down.inject({ method: 'GET', url: '/healthz' })
  t.equal(res.statusCode, 503)
  t.same(res.json().checks, { postgres: 'ok', readings: 'failed', load: 'ok' })
})

t.test('a health check cannot shadow a built-in one', async (t) => {
  await t.rejects(buildApi({ ...deps, healthChecks: { postgres: async () => {} } }), /taken/)
})

t.test('/metrics serves the Prometheus text format', async (t) => {
  deps.metrics.readingsStored.inc(3)
  const res = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.match(res.body, /^# HELP /m)
  t.match(res.body, /^vigil_readings_stored_total 3$/m)
  t.notOk(res.body.startsWith('"'), 'not JSON-encoded')
})
