import Fastify from 'fastify'
import t from 'tap'
import { registerDurableWrites } from '../../api/plugins/durable-writes.ts'

// Which answers wait for the embedded data directory's sync (test/e2e/power-cut-embedded.test.ts
// shows the sync keeps a write through a power cut): successful writes, a GET that commits, not
// a POST that only reads, not a refusal. A counting flush stands in for `sync -f` here.

async function appWith (flush: () => Promise<void>) {
  const app = Fastify()
  registerDurableWrites(app, flush)
  app.post('/write', async (_request, reply) => await reply.code(201).header('location', '/write/1').send({ id: 1 }))
  app.post('/search', { config: { durable: false } }, async () => ({ items: [] }))
  app.get('/kick-off', { config: { durable: true } }, async (_request, reply) => await reply.code(202).send())
  app.get('/read', async () => ({ ok: true }))
  app.post('/refused', async (_request, reply) => await reply.code(400).send({ code: 'VIGIL_ERR_VALIDATION', message: 'no' }))
  await app.ready()
  return app
}

t.test('successful writes and a committing GET wait for the sync; reads and refusals do not', async (t) => {
  let syncs = 0
  const app = await appWith(async () => { syncs++ })
  t.teardown(() => app.close())
  const count = async (method: 'GET' | 'POST', url: string, status: number): Promise<number> => {
    const before = syncs
    const res = await app.inject({ method, url, ...(method === 'POST' ? { payload: {} } : {}) })
    t.equal(res.statusCode, status, `${method} ${url}`)
    return syncs - before
  }
  t.equal(await count('POST', '/write', 201), 1, 'a write')
  t.equal(await count('GET', '/kick-off', 202), 1, 'a GET marked durable (the bulk export kick-off)')
  t.equal(await count('POST', '/search', 200), 0, 'a POST marked as a read (searches)')
  t.equal(await count('GET', '/read', 200), 0, 'a read')
  t.equal(await count('POST', '/refused', 400), 0, 'a refusal')
  t.equal(await count('POST', '/nowhere', 404), 0, 'a 404')
})

t.test('a failed sync: 503 with a stable code, no Retry-After and no Location, nothing of the body', async (t) => {
  const app = await appWith(async () => { throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }) })
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'POST', url: '/write', payload: {} })
  t.equal(res.statusCode, 503)
  t.same(Object.keys(res.json()).sort(), ['code', 'message'])
  t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
  t.equal(res.headers['retry-after'], undefined, 'no invitation to retry blindly: the write was made')
  t.equal(res.headers.location, undefined)
  t.notMatch(res.body, /"id"/, 'the committed body is not sent')
})
