// Issue 13 (also): the patient list is sorted by name, and people who may read patients search it by name.
import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, userWithLogin } from '../helpers/people.ts'

const { app, headers: admin } = await startApiFixture(t, 'patient list')
const names = ['zoe Zimmer', 'Amy Archer', 'bob Baker', 'Carl Cole', 'Dora Dunn', 'Eve Evans']
const ids = new Map<string, string>()
for (const name of names) ids.set(name, await newPatient(app, admin, name))
const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@example.org')
await onCareTeam(app, admin, nurse.id, ids.get('bob Baker')!)
await onCareTeam(app, admin, nurse.id, ids.get('zoe Zimmer')!)
const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@example.org')

t.test('GET /v1/patients is sorted by name (case-insensitive), page after page', async (t) => {
  const seen: string[] = []
  let cursor: string | undefined
  do {
    const res = await app.inject({ method: 'GET', url: `/v1/patients?limit=2${cursor === undefined ? '' : `&cursor=${cursor}`}`, headers: admin })
    t.equal(res.statusCode, 200)
    seen.push(...(res.json().items as Array<{ displayName: string }>).map((p) => p.displayName))
    cursor = res.json().nextCursor ?? undefined
  } while (cursor !== undefined)
  t.same(seen, ['Amy Archer', 'bob Baker', 'Carl Cole', 'Dora Dunn', 'Eve Evans', 'zoe Zimmer'])
  const mine = await app.inject({ method: 'GET', url: '/v1/patients', headers: nurse.headers })
  t.same(mine.json().items.map((p: { displayName: string }) => p.displayName), ['bob Baker', 'zoe Zimmer'], 'a nurse: her patients, by name')
  const probe = await app.inject({ method: 'GET', url: `/v1/patients?cursor=${ids.get('Carl Cole')!}`, headers: nurse.headers })
  t.equal(probe.statusCode, 400, 'a cursor naming a patient she cannot see is refused (no probing where a name sorts)')
  t.equal(probe.json().code, 'VIGIL_ERR_BAD_CURSOR')
})

t.test('POST /v1/patients/search finds visible patients by name, audited, name never in the URL', async (t) => {
  const search = async (headers: Record<string, string>, payload: Record<string, unknown>) => await app.inject({ method: 'POST', url: '/v1/patients/search', headers, payload })
  const all = await search(admin, { name: 'ba' })
  t.equal(all.statusCode, 200)
  t.same(all.json().items.map((p: { displayName: string }) => p.displayName), ['bob Baker'])
  const several = await search(admin, { name: 'E' })
  t.same(several.json().items.map((p: { displayName: string }) => p.displayName), ['Amy Archer', 'bob Baker', 'Carl Cole', 'Eve Evans', 'zoe Zimmer'], 'substring, any case, sorted by name')
  t.same((await search(nurse.headers, { name: 'e' })).json().items.map((p: { displayName: string }) => p.displayName), ['bob Baker', 'zoe Zimmer'], 'a nurse finds only her patients')
  t.same((await search(nurse.headers, { name: '%' })).json().items, [], 'LIKE wildcards are matched literally')
  t.equal((await search(integrator.headers, { name: 'bob' })).statusCode, 403, 'no patients:read, no search')
  t.equal((await search(admin, { name: '' })).statusCode, 400)
  const audit = await app.inject({ method: 'GET', url: '/v1/audit?limit=200', headers: admin })
  t.ok(audit.json().items.some((r: { action: string }) => r.action === 'patients:search'), 'each search is an audit row')
  t.notMatch(audit.body, /"ba"|bob Baker/, 'the audit row holds no search text or name')
})
