import Fastify from 'fastify'
import t from 'tap'
import { registerRequestMetrics, type RequestTiming } from '../../api/plugins/request-metrics.ts'

t.test('every answer is timed by method, route template and status class, refusals included', async (t) => {
  const seen: RequestTiming[] = []
  const app = Fastify()
  t.teardown(() => app.close())
  registerRequestMetrics(app, (timing, seconds) => {
    t.ok(seconds >= 0 && seconds < 10, 'seconds, not milliseconds')
    seen.push(timing)
  })
  // A refusal before the handler, as the budgets and load shedding answer.
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers['x-refuse'] === 'yes') await reply.code(429).send({ error: 'slow down' })
  })
  app.get('/v1/patients/:id', async () => ({ ok: true }))
  app.get('/v1/broken/:id', async () => { throw new Error('boom') })
  const id = '0a000000-0000-4000-8000-000000000001'

  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${id}` })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${id}`, headers: { 'x-refuse': 'yes' } })).statusCode, 429)
  t.equal((await app.inject({ method: 'GET', url: `/v1/broken/${id}` })).statusCode, 500)
  t.equal((await app.inject({ method: 'GET', url: `/v1/nothing/${id}` })).statusCode, 404)
  t.equal((await app.inject({ method: 'PROPFIND', url: `/v1/patients/${id}` })).statusCode, 404)

  t.same(seen, [
    { method: 'GET', route: '/v1/patients/:id', status: '2xx' },
    { method: 'GET', route: '/v1/patients/:id', status: '4xx' },
    { method: 'GET', route: '/v1/broken/:id', status: '5xx' },
    { method: 'GET', route: 'unmatched', status: '4xx' },
    { method: 'other', route: 'unmatched', status: '4xx' }
  ])
  t.notMatch(JSON.stringify(seen), new RegExp(id), 'no id in any label')
})
