import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'

const { db, deps, app, headers } = await startApiFixture(t, 'patients test')

t.test('create a patient, then read it back', async (t) => {
  const created = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: '  Ada Lovelace ' } })
  t.equal(created.statusCode, 201)
  const patient = created.json()
  t.match(patient, { id: /^[0-9a-f-]{36}$/, displayName: 'Ada Lovelace', createdAt: String })
  t.same(Object.keys(patient).sort(), ['createdAt', 'displayName', 'id'])

  const got = await app.inject({ method: 'GET', url: `/v1/patients/${patient.id}`, headers })
  t.equal(got.statusCode, 200)
  t.same(got.json(), patient)
})

t.test('invalid patient bodies are 400 VIGIL_ERR_VALIDATION naming the field', async (t) => {
  const cases: Array<[string, unknown, string]> = [
    ['missing', {}, 'body/displayName'],
    ['empty', { displayName: '' }, 'body/displayName'],
    ['blank', { displayName: '   ' }, 'body/displayName'],
    ['too long', { displayName: 'x'.repeat(201) }, 'body/displayName'],
    ['not a string', { displayName: 42 }, 'body/displayName'],
    ['unknown field', { displayName: 'Ok', dob: '1990-01-01' }, 'body/dob']
  ]
  for (const [name, payload, path] of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: payload as object })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', name)
    t.ok(res.json().details.some((d: { path: string }) => d.path === path), `${name}: details name ${path}`)
  }
  const max = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'x'.repeat(200) } })
  t.equal(max.statusCode, 201, '200 characters is allowed')
})

t.test('a body that is not JSON is a 400 that does not quote it', async (t) => {
  const res = await app.inject({
    method: 'POST', url: '/v1/patients', headers: { ...headers, 'content-type': 'application/json' }, payload: '{"displayName": Grace Hopper'
  })
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'VIGIL_ERR_VALIDATION')
  t.notMatch(res.body, /Grace/)
})

t.test('unknown and malformed patient ids', async (t) => {
  const unknown = await app.inject({ method: 'GET', url: '/v1/patients/00000000-0000-4000-8000-000000000000', headers })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
  const malformed = await app.inject({ method: 'GET', url: '/v1/patients/not-a-uuid', headers })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'VIGIL_ERR_VALIDATION')
  t.equal(malformed.json().details[0].path, 'params/id')
})

t.test('list pages through every patient exactly once', async (t) => {
  for (let i = 0; i < 5; i++) {
    const res = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: `Listed ${i}` } })
    t.equal(res.statusCode, 201)
  }
  const { rows } = await db.pool.query('SELECT id::text FROM patients ORDER BY lower(display_name), id')
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const url: string = `/v1/patients?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`
    const res = await app.inject({ method: 'GET', url, headers })
    t.equal(res.statusCode, 200)
    const body = res.json()
    t.ok(body.items.length <= 2)
    seen.push(...body.items.map((p: { id: string }) => p.id))
    cursor = body.nextCursor
    pages++
  } while (cursor !== null && pages < 20)
  t.same(seen, rows.map((r) => r.id), 'by name (then id), no gaps or repeats')
  t.equal(pages, Math.ceil(rows.length / 2), 'the last page says so (no empty trailing page)')
})

t.test('list query validation', async (t) => {
  for (const query of ['limit=0', 'limit=1001', 'limit=abc', 'extra=1']) {
    const res = await app.inject({ method: 'GET', url: `/v1/patients?${query}`, headers })
    t.equal(res.statusCode, 400, query)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', query)
  }
  const bad = await app.inject({ method: 'GET', url: '/v1/patients?cursor=nope', headers })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'VIGIL_ERR_BAD_CURSOR')
})
