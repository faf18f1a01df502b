import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'

// A controllable clock: expiry, idle timeout and lockout are tested by moving it, not by sleeping.
let nowMs = Date.parse('2026-03-01T09:00:00Z')
const now = (): Date => new Date(nowMs)
const advance = (seconds: number): void => { nowMs += seconds * 1000 }

const settings = { accessTokenTtlSeconds: 900, sessionIdleSeconds: 1800, sessionMaxSeconds: 7200, loginMaxFailures: 5, loginLockoutSeconds: 900 }
const { db, deps, app, token: adminToken, headers: admin } = await startApiFixture(t, 'auth test', {
  access: { now, settings },
  apiOptions: { rateLimitPerMinute: 100_000, unauthenticatedRateLimitPerMinute: 100_000 }
})
const password = 'correct horse 42'

let userCount = 0
async function newNurse (): Promise<{ id: string, email: string }> {
  const email = `Nurse${++userCount}@Example.org`
  const res = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email, displayName: `Nurse ${userCount}`, password, roles: ['nurse'] } })
  if (res.statusCode !== 201) throw new Error(`create user: ${res.statusCode} ${res.body}`)
  return { id: res.json().id, email }
}

async function login (email: string, pw = password) {
  return await app.inject({ method: 'POST', url: '/v1/auth/login', payload: { email, password: pw } })
}

async function me (accessToken: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: `Bearer ${accessToken}` } })).statusCode
}

t.test('login works with any case of the email and gives a token pair', async (t) => {
  const user = await newNurse()
  const res = await login(user.email.toLowerCase())
  t.equal(res.statusCode, 200)
  t.match(res.json(), { tokenType: 'Bearer', accessToken: /^vga_/, refreshToken: /^vgr_/, expiresIn: 900, userId: user.id })
  t.equal(await me(res.json().accessToken), 200)
})

t.test('invalid user bodies are 400 naming the field', async (t) => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['invalid email', { email: 'not-an-email', displayName: 'X', password }, 'body/email'],
    ['short password', { email: 'a@b.org', displayName: 'X', password: 'Sh0rt!' }, 'body/password'],
    ['one class only', { email: 'a@b.org', displayName: 'X', password: 'alllowercaseletters' }, 'body/password'],
    ['all digits', { email: 'a@b.org', displayName: 'X', password: '123456789012345' }, 'body/password'],
    ['repeated characters', { email: 'a@b.org', displayName: 'X', password: 'aaaaaaAAAAAA' }, 'body/password'],
    ['missing display name', { email: 'a@b.org', password }, 'body/displayName'],
    ['unknown field', { email: 'a@b.org', displayName: 'X', password, dob: '1990-01-01' }, 'body/dob']
  ]
  for (const [name, payload, path] of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', name)
    t.ok(res.json().details.some((d: { path: string }) => d.path === path), `${name}: details name ${path}`)
    t.notMatch(res.body, /Sh0rt|alllowercase|123456789012345/, `${name}: the password is not echoed`)
  }
  const user = await newNurse()
  const dup = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email: user.email.toUpperCase(), displayName: 'Y', password } })
  t.equal(dup.statusCode, 409)
  t.equal(dup.json().code, 'VIGIL_ERR_DUPLICATE_EMAIL')
  const badRole = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email: 'r@b.org', displayName: 'Y', password, roles: ['wizard'] } })
  t.equal(badRole.json().code, 'VIGIL_ERR_UNKNOWN_ROLE')
  t.equal((await login('r@b.org')).statusCode, 401, 'a failed create leaves no user behind')
})

t.test('failures look alike: unknown email, wrong password, locked account', async (t) => {
  const user = await newNurse()
  const unknown = await login('nobody@example.org')
  const wrong = await login(user.email, 'wrong password 1')
  t.equal(unknown.statusCode, 401)
  t.equal(wrong.statusCode, 401)
  t.same(unknown.json(), wrong.json())
  t.equal(wrong.json().code, 'VIGIL_ERR_LOGIN_FAILED')
})

t.test('five wrong passwords lock the account for the lockout period', async (t) => {
  const user = await newNurse()
  for (let i = 0; i < 5; i++) t.equal((await login(user.email, `wrong password ${i}`)).statusCode, 401)
  const locked = await login(user.email)
  t.equal(locked.statusCode, 401, 'the right password is refused while locked')
  t.equal(locked.json().code, 'VIGIL_ERR_LOGIN_FAILED')
  t.same(locked.json(), (await login('nobody@example.org')).json(), 'a locked account looks like any failure')
  const shown = await app.inject({ method: 'GET', url: `/v1/users/${user.id}`, headers: admin })
  t.ok(shown.json().lockedUntil, 'admins see the lock')
  advance(899)
  t.equal((await login(user.email)).statusCode, 401, 'still locked one second before the end')
  advance(2)
  t.equal((await login(user.email)).statusCode, 200, 'unlocked after the lockout')
})

t.test('a success resets the failure count', async (t) => {
  const user = await newNurse()
  for (let i = 0; i < 4; i++) await login(user.email, `wrong password ${i}`)
  t.equal((await login(user.email)).statusCode, 200)
  for (let i = 0; i < 4; i++) await login(user.email, `wrong password ${i}`)
  t.equal((await login(user.email)).statusCode, 200, 'four more failures do not lock')
})

t.test('an access token expires after its TTL; refresh gives a new one', async (t) => {
  const user = await newNurse()
  const pair = (await login(user.email)).json()
  advance(600)
  t.equal(await me(pair.accessToken), 200)
  advance(301)
  t.equal(await me(pair.accessToken), 401, 'expired access token refused')
  const refreshed = await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: pair.refreshToken } })
  t.equal(refreshed.statusCode, 200)
  t.not(refreshed.json().accessToken, pair.accessToken)
  t.equal(await me(refreshed.json().accessToken), 200)
})

t.test('refresh rotates; reusing an old refresh token ends the session', async (t) => {
  const user = await newNurse()
  const first = (await login(user.email)).json()
  const second = (await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: first.refreshToken } })).json()
  t.equal(await me(first.accessToken), 401, 'the previous access token stops at refresh')
  t.equal(await me(second.accessToken), 200)
  const reuse = await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: first.refreshToken } })
  t.equal(reuse.statusCode, 401)
  t.equal(reuse.json().code, 'VIGIL_ERR_UNAUTHENTICATED')
  t.equal(await me(second.accessToken), 401, 'the whole family is revoked')
  const third = await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: second.refreshToken } })
  t.equal(third.statusCode, 401, 'the newest refresh token is revoked too')
  t.equal((await login(user.email)).statusCode, 200, 'the user can log in again')
})

t.test('an idle session expires: neither token works after the idle window', async (t) => {
  const user = await newNurse()
  const pair = (await login(user.email)).json()
  advance(800)
  t.equal(await me(pair.accessToken), 200, 'use keeps the session alive')
  advance(1799)
  const refreshed = await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: pair.refreshToken } })
  t.equal(refreshed.statusCode, 200, 'refreshable within the idle window')
  advance(1801)
  t.equal(await me(refreshed.json().accessToken), 401)
  t.equal((await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: refreshed.json().refreshToken } })).statusCode, 401)
})

t.test('a session ends at its maximum age even when used', async (t) => {
  const user = await newNurse()
  let pair = (await login(user.email)).json()
  for (let i = 0; i < 10; i++) {
    advance(800)
    const r = await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: pair.refreshToken } })
    if (r.statusCode !== 200) break
    pair = r.json()
  }
  t.equal(await me(pair.accessToken), 401, 'no session outlives sessionMaxSeconds (7200 s)')
})

t.test('logout revokes the session (by access token or refresh token)', async (t) => {
  const user = await newNurse()
  const a = (await login(user.email)).json()
  const out = await app.inject({ method: 'POST', url: '/v1/auth/logout', headers: { authorization: `Bearer ${a.accessToken}` } })
  t.equal(out.statusCode, 204)
  t.equal(await me(a.accessToken), 401)
  t.equal((await app.inject({ method: 'POST', url: '/v1/auth/refresh', payload: { refreshToken: a.refreshToken } })).statusCode, 401)
  const b = (await login(user.email)).json()
  t.equal((await app.inject({ method: 'POST', url: '/v1/auth/logout', payload: { refreshToken: b.refreshToken } })).statusCode, 204)
  t.equal(await me(b.accessToken), 401)
  t.equal((await app.inject({ method: 'POST', url: '/v1/auth/logout', payload: { refreshToken: 'vgr_nonsense' } })).statusCode, 204, 'idempotent')
})

t.test('deactivating a user ends its sessions and refuses login', async (t) => {
  const user = await newNurse()
  const pair = (await login(user.email)).json()
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/users/${user.id}`, headers: admin })).statusCode, 204)
  t.equal(await me(pair.accessToken), 401)
  t.equal((await login(user.email)).statusCode, 401)
  const back = await app.inject({ method: 'PATCH', url: `/v1/users/${user.id}`, headers: admin, payload: { active: true } })
  t.equal(back.json().active, true)
  t.equal((await login(user.email)).statusCode, 200)
})

t.test('a new password ends sessions and the old password stops working', async (t) => {
  const user = await newNurse()
  const pair = (await login(user.email)).json()
  const changed = await app.inject({ method: 'PATCH', url: `/v1/users/${user.id}`, headers: admin, payload: { password: 'another Secret 7' } })
  t.equal(changed.statusCode, 200)
  t.equal(await me(pair.accessToken), 401)
  t.equal((await login(user.email)).statusCode, 401)
  t.equal((await login(user.email, 'another Secret 7')).statusCode, 200)
})

t.test('API tokens keep working next to sessions', async (t) => {
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: admin })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: 'Bearer vga_forged' } })).statusCode, 401)
})
