import t from 'tap'
import { csrfTokenFor } from '../../access/auth.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

// The web app's cookie session (api/routes/browser-session.ts, the cookie branch of the auth
// hook in access/auth.ts): what the browser gets, and what a forged request does not.
// Load shedding off: on a busy shared machine a 503 would say nothing about cookies.

const { app, headers: admin } = await startApiFixture(t, 'browser session test', { apiOptions: { trustProxy: true, maxEventLoopDelayMs: 0 } })
const password = 'correct horse battery 42'
const created = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email: 'admin@web.example', displayName: 'Web Admin', password, roles: ['admin'] } })
if (created.statusCode !== 201) throw new Error(`create user: ${created.statusCode} ${created.body}`)

function cookiesOf (res: { headers: Record<string, unknown> }): Map<string, string> {
  const raw = res.headers['set-cookie']
  const list = Array.isArray(raw) ? raw : raw === undefined ? [] : [String(raw)]
  return new Map(list.map((c: string) => [c.slice(0, c.indexOf('=')), c]))
}
const valueOf = (cookie: string | undefined): string => cookie!.slice(cookie!.indexOf('=') + 1, cookie!.indexOf(';'))

async function signIn (extra: Record<string, string> = {}) {
  const res = await app.inject({ method: 'POST', url: '/v1/auth/browser/login', headers: extra, payload: { email: 'admin@web.example', password } })
  t.equal(res.statusCode, 200, 'signed in')
  const cookies = cookiesOf(res)
  return { res, cookies, body: res.json() }
}

t.test('sign-in sets HttpOnly SameSite=Strict cookies and gives the page only a CSRF token', async (t) => {
  const { cookies, body } = await signIn()
  const session = cookies.get('vigil_session')
  const refresh = cookies.get('vigil_refresh')
  t.match(session, /^vigil_session=vga_[^;]+; Path=\/; HttpOnly; SameSite=Strict$/)
  t.match(refresh, /^vigil_refresh=vgr_[^;]+; Path=\/v1\/auth\/browser; HttpOnly; SameSite=Strict$/)
  t.notOk('accessToken' in body || 'refreshToken' in body, 'no token in the body, where script could read it')
  t.equal(body.csrfToken, csrfTokenFor(valueOf(session)))
  t.ok(body.permissions.includes('users:admin'))
  t.equal(body.idleSeconds, 1800)
})

t.test('the cookie authenticates reads; writes need the CSRF token and a same-origin request', async (t) => {
  const { cookies, body } = await signIn()
  const cookie = `vigil_session=${valueOf(cookies.get('vigil_session'))}`
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie } })).statusCode, 200, 'GET with the cookie')
  const write = async (h: Record<string, string>) => await app.inject({ method: 'POST', url: '/v1/patients', headers: { cookie, ...h }, payload: { displayName: 'Web Patient' } })
  for (const [name, h] of [
    ['no token', {}],
    ['wrong token', { 'x-csrf-token': csrfTokenFor('vga_someone-else') }],
    ['right token, cross-site', { 'x-csrf-token': body.csrfToken, 'sec-fetch-site': 'cross-site' }],
    ['right token, same-site other origin', { 'x-csrf-token': body.csrfToken, 'sec-fetch-site': 'same-site' }]
  ] as const) {
    const res = await write(h)
    t.equal(res.statusCode, 403, name)
    t.equal(res.json().code, 'VIGIL_ERR_CSRF', name)
  }
  t.equal((await write({ 'x-csrf-token': body.csrfToken, 'sec-fetch-site': 'same-origin' })).statusCode, 201, 'the page\'s own write')
  t.equal((await write({ 'x-csrf-token': body.csrfToken })).statusCode, 201, 'a browser without Fetch Metadata')
  // A bearer token is not ambient: no CSRF token needed (API clients unchanged).
  t.equal((await app.inject({ method: 'POST', url: '/v1/patients', headers: admin, payload: { displayName: 'API Patient' } })).statusCode, 201)
})

t.test('the cookie carries session tokens only, and an Authorization header is judged alone', async (t) => {
  const { cookies } = await signIn()
  const cookie = `vigil_session=${valueOf(cookies.get('vigil_session'))}`
  const apiToken = admin.authorization.slice('Bearer '.length)
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: `vigil_session=${apiToken}` } })).statusCode, 401, 'an API token in the cookie is ignored')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie, authorization: 'Bearer vgt_wrong' } })).statusCode, 401, 'a bad header is not rescued by the cookie')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: `other=1; ${cookie}; x=y` } })).statusCode, 200, 'found among other cookies')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: cookie.replace('vigil_session', '__Host-vigil_session') } })).statusCode, 401, 'over plain HTTP only the plain name counts')
})

t.test('refresh rotates both cookies; the old ones stop working; a reused refresh cookie ends the session', async (t) => {
  const { cookies } = await signIn()
  const oldSession = `vigil_session=${valueOf(cookies.get('vigil_session'))}`
  const oldRefresh = `vigil_refresh=${valueOf(cookies.get('vigil_refresh'))}`
  const refreshed = await app.inject({ method: 'POST', url: '/v1/auth/browser/refresh', headers: { cookie: oldRefresh } })
  t.equal(refreshed.statusCode, 200)
  const next = cookiesOf(refreshed)
  const newSession = `vigil_session=${valueOf(next.get('vigil_session'))}`
  t.not(newSession, oldSession)
  t.equal(refreshed.json().csrfToken, csrfTokenFor(valueOf(next.get('vigil_session'))), 'a new CSRF token with the new cookie')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: oldSession } })).statusCode, 401, 'old access cookie')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: newSession } })).statusCode, 200, 'new access cookie')
  const session = await app.inject({ method: 'GET', url: '/v1/auth/browser/session', headers: { cookie: newSession } })
  t.equal(session.statusCode, 200, 'a reloaded page finds its session')
  t.equal(session.json().csrfToken, refreshed.json().csrfToken)
  const reused = await app.inject({ method: 'POST', url: '/v1/auth/browser/refresh', headers: { cookie: oldRefresh } })
  t.equal(reused.statusCode, 401, 'reused refresh cookie')
  t.match(cookiesOf(reused).get('vigil_session'), /Max-Age=0/, 'and the cookies are cleared')
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie: newSession } })).statusCode, 401, 'the whole session ended')
})

t.test('sign-out ends the session and clears both cookies; without a cookie there is no session', async (t) => {
  const { cookies } = await signIn()
  const cookie = `vigil_session=${valueOf(cookies.get('vigil_session'))}; vigil_refresh=${valueOf(cookies.get('vigil_refresh'))}`
  const out = await app.inject({ method: 'POST', url: '/v1/auth/browser/logout', headers: { cookie } })
  t.equal(out.statusCode, 204)
  const cleared = cookiesOf(out)
  t.match(cleared.get('vigil_session'), /^vigil_session=; Path=\/; HttpOnly; SameSite=Strict; Max-Age=0$/)
  t.match(cleared.get('vigil_refresh'), /Max-Age=0/)
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { cookie } })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/v1/auth/browser/session' })).statusCode, 401)
  const crossSite = await app.inject({ method: 'POST', url: '/v1/auth/browser/login', headers: { 'sec-fetch-site': 'cross-site' }, payload: { email: 'admin@web.example', password } })
  t.equal(crossSite.json().code, 'VIGIL_ERR_CSRF', 'no sign-in from another site (login CSRF)')
})

t.test('under TLS the cookies are Secure, the session cookie is __Host-, and the plain name is ignored', async (t) => {
  const https = { 'x-forwarded-proto': 'https' }
  const { cookies } = await signIn(https)
  const session = cookies.get('__Host-vigil_session')
  t.match(session, /^__Host-vigil_session=vga_[^;]+; Path=\/; HttpOnly; SameSite=Strict; Secure$/)
  t.match(cookies.get('__Secure-vigil_refresh'), /; Path=\/v1\/auth\/browser; HttpOnly; SameSite=Strict; Secure$/)
  const value = valueOf(session)
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { ...https, cookie: `__Host-vigil_session=${value}` } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients', headers: { ...https, cookie: `vigil_session=${value}` } })).statusCode, 401,
    'a cookie any plain-HTTP page could have set does not count under TLS')
})
