import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, userWithLogin } from '../helpers/people.ts'

// Issue 11 §3 and the README's promise "a token never holds more than its creator": a token's
// permissions are at most its creator's current ones, so deactivating or demoting the creator
// takes effect on the token at its next request. The fixture's token (like VIGIL_ADMIN_TOKEN)
// has no creator and keeps working.
const { app, headers: bootstrap } = await startApiFixture(t, 'bootstrap admin', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})
const patientId = await newPatient(app, bootstrap, 'Token Patient')

async function adminToken (creator: Record<string, string>, name: string): Promise<{ id: string, headers: Record<string, string> }> {
  const res = await app.inject({ method: 'POST', url: '/v1/tokens', headers: creator, payload: { name, role: 'admin' } })
  if (res.statusCode !== 201) throw new Error(`token ${name}: ${res.statusCode} ${res.body}`)
  return { id: res.json().id, headers: { authorization: `Bearer ${res.json().token}` } }
}

const newUser = (by: Record<string, string>, email: string) => app.inject({
  method: 'POST', url: '/v1/users', headers: by, payload: { email, displayName: 'New Admin', password: 'correct horse 42', roles: ['admin'] }
})

t.test('deactivating the creator ends its tokens, and the tokens they made', async (t) => {
  const creator = await userWithLogin(app, bootstrap, ['admin'], 'leaving.admin@example.org')
  const token = await adminToken(creator.headers, 'leaver token')
  const child = await adminToken(token.headers, 'made by the leaver\'s token')
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: token.headers })).statusCode, 200, 'works while the creator is active')

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/users/${creator.id}`, headers: bootstrap })).statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: creator.headers })).statusCode, 401, 'the session ends')
  const read = await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: token.headers })
  t.equal(read.statusCode, 401, 'was 200: the token read records after its creator left')
  t.equal(read.json().code, 'VIGIL_ERR_UNAUTHENTICATED')
  t.equal((await newUser(token.headers, 'made.by.leaver@example.org')).statusCode, 401, 'was 201: it created an admin user')
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: child.headers })).statusCode, 401, 'a token the token made ends too')

  t.equal((await app.inject({ method: 'PATCH', url: `/v1/users/${creator.id}`, headers: bootstrap, payload: { active: true } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: token.headers })).statusCode, 200, 'reactivated: the token follows')
})

t.test('demoting the creator demotes its tokens: they cannot grant admin back', async (t) => {
  const creator = await userWithLogin(app, bootstrap, ['admin', 'nurse'], 'demoted.admin@example.org')
  const token = await adminToken(creator.headers, 'demoted token')
  t.equal((await app.inject({ method: 'GET', url: '/v1/users', headers: token.headers })).statusCode, 200)

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/users/${creator.id}/roles/admin`, headers: bootstrap })).statusCode, 204)
  const regrant = await app.inject({ method: 'PUT', url: `/v1/users/${creator.id}/roles/admin`, headers: token.headers })
  t.equal(regrant.statusCode, 403, 'was 200: the token granted admin back to its creator')
  t.equal(regrant.json().code, 'VIGIL_ERR_FORBIDDEN')
  const roles = (await app.inject({ method: 'GET', url: `/v1/users/${creator.id}`, headers: bootstrap })).json().roles
  t.same(roles, ['nurse'], 'still a nurse only')
  t.equal((await newUser(token.headers, 'made.by.demoted@example.org')).statusCode, 403, 'no users:admin')
  const patient = await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: token.headers })
  t.equal(patient.statusCode, 404, 'patients:read stays (the nurse has it), reaching every patient does not')
  const mint = await app.inject({ method: 'POST', url: '/v1/tokens', headers: token.headers, payload: { name: 'escape', role: 'admin' } })
  t.equal(mint.statusCode, 403, 'cannot mint a new admin token either')
})

t.test('audit rows for token calls name the token\'s creator', async (t) => {
  const creator = await userWithLogin(app, bootstrap, ['admin'], 'audited.admin@example.org')
  const token = await adminToken(creator.headers, 'audited token')
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: token.headers })).statusCode, 200)
  const rows = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${creator.id}&limit=5`, headers: bootstrap })).json().items
  t.match(rows[0], { actorId: token.id, actorKind: 'token', tokenCreator: creator.id, patientId }, 'found under the creator\'s id, naming the token')

  const byBootstrap = await adminToken(bootstrap, 'made by the bootstrap token')
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: byBootstrap.headers })).statusCode, 200, 'tokens of a creatorless token work')
  const last = (await app.inject({ method: 'GET', url: `/v1/audit?actorId=${byBootstrap.id}&limit=1`, headers: bootstrap })).json().items[0]
  t.match(last, { tokenCreator: /^token:/ })

  const grandchild = await adminToken(byBootstrap.headers, 'made by a token')
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/tokens/${byBootstrap.id}`, headers: bootstrap })).statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: grandchild.headers })).statusCode, 401, 'a revoked token\'s tokens stop too')
  t.equal((await app.inject({ method: 'GET', url: `/v1/patients/${patientId}`, headers: bootstrap })).statusCode, 200, 'the creatorless bootstrap token keeps working')
})
