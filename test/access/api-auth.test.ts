import t from 'tap'
import { permissions } from '../../access/auth.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

const { db, deps, app, token } = await startApiFixture(t, 'auth test')

t.test('every /v1 route refuses a request without a valid token, the same way', async (t) => {
  const cases: Array<[string, Record<string, string>]> = [
    ['no header', {}],
    ['wrong token', { authorization: 'Bearer vgt_not-a-real-token' }],
    ['other scheme', { authorization: `Basic ${token}` }],
    ['empty bearer', { authorization: 'Bearer ' }],
    ['token without scheme', { authorization: token }]
  ]
  const bodies = new Set<string>()
  for (const [name, headers] of cases) {
    const res = await app.inject({ method: 'GET', url: '/v1/patients', headers })
    t.equal(res.statusCode, 401, name)
    t.equal(res.json().code, 'VIGIL_ERR_UNAUTHENTICATED', name)
    t.match(res.headers['www-authenticate'], /^Bearer/, name)
    bodies.add(res.body)
  }
  t.equal(bodies.size, 1, 'missing and wrong tokens are indistinguishable')
})

t.test('authentication runs before the body is read or validated', async (t) => {
  const res = await app.inject({ method: 'POST', url: '/v1/patients', payload: { bogus: true } })
  t.equal(res.statusCode, 401)
  t.equal(res.json().code, 'VIGIL_ERR_UNAUTHENTICATED')
})

t.test('a valid token is accepted, case-insensitive scheme', async (t) => {
  for (const scheme of ['Bearer', 'bearer']) {
    const res = await app.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: `${scheme} ${token}` } })
    t.equal(res.statusCode, 200, scheme)
  }
})

t.test('a revoked token is refused', async (t) => {
  const revoked = await deps.tokens.create('revoked', 'admin')
  await db.pool.query('UPDATE api_tokens SET revoked_at = now() WHERE id = $1', [revoked.id])
  const res = await app.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: `Bearer ${revoked.token}` } })
  t.equal(res.statusCode, 401)
})

t.test('a token whose role grants nothing gets 403', async (t) => {
  const other = await deps.tokens.create('unknown role', 'admin')
  await db.pool.query('UPDATE api_tokens SET role = \'retired-role\' WHERE id = $1', [other.id])
  const res = await app.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: `Bearer ${other.token}` } })
  t.equal(res.statusCode, 403)
  t.equal(res.json().code, 'VIGIL_ERR_FORBIDDEN')
})

t.test('admin holds every permission', async (t) => {
  const admin = await deps.access.people.getRole('admin')
  t.same([...admin!.permissions].sort(), [...permissions].sort())
})

t.test('public routes need no token', async (t) => {
  for (const url of ['/healthz', '/metrics', '/docs/json']) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 200, url)
  }
})

t.test('a /v1 route without a declared permission cannot be registered', async (t) => {
  const { requireAuthentication } = await import('../../access/auth.ts')
  const Fastify = (await import('fastify')).default
  const bare = Fastify()
  t.teardown(() => bare.close())
  await bare.register(async (v1) => {
    const budgets = { chargeAddress: async () => {}, chargeToken: async () => {}, refuseExhaustedAddress: async () => {} }
    requireAuthentication(v1, deps.access.authenticate, budgets)
    t.throws(() => v1.get('/open', async () => ({})), /must declare config\.permission/)
  })
})

t.test('request ids are always generated; a safe incoming x-request-id is echoed as the client\'s own', async (t) => {
  const client = await app.inject({ method: 'GET', url: '/healthz', headers: { 'x-request-id': 'trace-1.2_3' } })
  t.match(client.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'issue 11 §11: was the client\'s trace-1.2_3')
  t.equal(client.headers['x-client-request-id'], 'trace-1.2_3')
  for (const bad of ['has space', 'x'.repeat(65), 'semi;colon', '']) {
    const res = await app.inject({ method: 'GET', url: '/healthz', headers: { 'x-request-id': bad } })
    t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/, JSON.stringify(bad))
    t.equal(res.headers['x-client-request-id'], undefined, `${JSON.stringify(bad)} is not echoed`)
  }
  const none = await app.inject({ method: 'GET', url: '/v1/patients' })
  t.match(none.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'generated on 401 responses too')
})

t.test('an unknown route is a 404 with a code', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/nope' })
  t.equal(res.statusCode, 404)
  t.equal(res.json().code, 'VIGIL_ERR_NOT_FOUND')
})
