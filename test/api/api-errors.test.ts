import pg from 'pg'
import pino from 'pino'
import t from 'tap'
import { buildApi, isUnavailable } from '../../api/app.ts'
import { createApiTokenStore } from '../../access/api-tokens.ts'
import { createPatientStore } from '../../patients/patients.ts'
import type { PatientStore } from '../../patients/patients.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

const { log, deps, app, token, headers } = await startApiFixture(t, 'errors test')

function capturedLog () {
  const lines: string[] = []
  return { lines, log: pino({ level: 'trace' }, { write: (line: string) => { lines.push(line) } }) }
}

t.test('an unexpected error is a 500 that hides internals and is logged with the request id', async (t) => {
  const { lines, log } = capturedLog()
  const failing: PatientStore = {
    ...deps.patients,
    get: async () => {
      const err = new Error('relation "patients_secret_shadow" does not exist') as Error & { detail?: string }
      err.detail = 'Failing row contains (Ada Lovelace)'
      throw err
    }
  }
  const broken = await buildApi({ ...deps, log, patients: failing })
  t.teardown(() => broken.close())

  const res = await broken.inject({
    method: 'GET', url: '/v1/patients/00000000-0000-4000-8000-000000000000', headers: { ...headers, 'x-request-id': 'req-500' }
  })
  t.equal(res.statusCode, 500)
  const requestId = res.headers['x-request-id'] as string
  t.match(requestId, /^[0-9a-f-]{36}$/, 'Vigil\'s own id, not the client\'s')
  t.same(res.json(), { code: 'VIGIL_ERR_INTERNAL', message: 'internal error', requestId })

  const logged = lines.map((l) => JSON.parse(l)).find((l) => l.msg === 'request failed')
  t.match(logged, { level: 50, reqId: requestId, clientRequestId: 'req-500', component: 'api', err: { message: /patients_secret_shadow/ } })
  t.notMatch(lines.join(''), 'Ada Lovelace', 'pg error details (row values) are not logged')
})

t.test('database connection failures are 503 with Retry-After', async (t) => {
  // A real refused connection: nothing listens on port 1.
  const dead = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres', connectionTimeoutMillis: 2000 })
  t.teardown(() => dead.end())
  const down = await buildApi({ ...deps, tokens: createApiTokenStore(dead), patients: createPatientStore(dead) })
  t.teardown(() => down.close())
  const res = await down.inject({ method: 'GET', url: '/v1/patients', headers })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '5')
  t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
  t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1/)

  const health = await down.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 200, 'healthz checks the real database handle, which is up')
})

t.test('which errors mean "unavailable"', async (t) => {
  const coded = (code: string) => Object.assign(new Error('x'), { code })
  for (const code of ['57P01', '57P03', '08006', '08001', 'ECONNREFUSED', 'ECONNRESET', '53300']) t.ok(isUnavailable(coded(code)), code)
  t.ok(isUnavailable(new Error('Connection terminated unexpectedly')))
  t.ok(isUnavailable(new Error('timeout exceeded when trying to connect')))
  t.ok(isUnavailable(new AggregateError([coded('ECONNREFUSED')])))
  t.ok(isUnavailable(new Error('wrapped', { cause: coded('57P01') })))
  for (const code of ['23505', '42P01', '22P02', '40001']) t.notOk(isUnavailable(coded(code)), code)
  t.notOk(isUnavailable(new Error('boom')))
  t.notOk(isUnavailable(null))
})

t.test('a store error with a connection code becomes 503 from any route', async (t) => {
  const flaky = await buildApi({ ...deps, patients: { ...deps.patients, create: async () => { throw Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }) } } })
  t.teardown(() => flaky.close())
  const res = await flaky.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'x' } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
})

t.test('request body limits and media types', async (t) => {
  const huge = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'x'.repeat(70_000) } })
  t.equal(huge.statusCode, 413)
  t.equal(huge.json().code, 'VIGIL_ERR_PAYLOAD_TOO_LARGE')

  const text = await app.inject({ method: 'POST', url: '/v1/patients', headers: { ...headers, 'content-type': 'text/plain' }, payload: 'Ada' })
  t.equal(text.statusCode, 400)
  t.equal(text.json().code, 'VIGIL_ERR_VALIDATION')

  const empty = await app.inject({ method: 'POST', url: '/v1/patients', headers: { ...headers, 'content-type': 'application/json' }, payload: '' })
  t.equal(empty.statusCode, 400)
  t.equal(empty.json().code, 'VIGIL_ERR_VALIDATION')
})

t.test('request logs carry no bodies, query strings or tokens', async (t) => {
  const { lines, log } = capturedLog()
  const observed = await buildApi({ ...deps, log })
  t.teardown(() => observed.close())
  const created = await observed.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'Grace Hopper' } })
  t.equal(created.statusCode, 201)
  const invalid = await observed.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'Grace Hopper', dob: '1906-12-09' } })
  t.equal(invalid.statusCode, 400)
  await observed.inject({ method: 'GET', url: '/v1/patients?limit=5&cursor=grace-hopper-cursor', headers })
  const all = lines.join('')
  t.notMatch(all, 'Grace')
  // The whole date: '1906' alone turned up inside a random request id (reqId d9e370db-1906-…) once.
  t.notMatch(all, '1906-12-09')
  t.notMatch(all, 'grace-hopper-cursor')
  t.notMatch(all, token)
  const incoming = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'incoming request')
  t.same(incoming.map((l) => l.req.url), ['/v1/patients', '/v1/patients', '/v1/patients'])
  t.ok(incoming.every((l) => l.req.route === '/v1/patients'))
})
