import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import type { Test } from 'tap'
import { apiLimitDefaults, buildApi } from '../../api/app.ts'
import { delayResolutionMs } from '../../api/plugins/load-shedding.ts'
import type { ApiDeps } from '../../api/app.ts'
import { docsContentSecurityPolicy } from '../../api/plugins/security-headers.ts'
import { createApiTokenStore } from '../../access/api-tokens.ts'
import type { ApiTokenStore } from '../../access/api-tokens.ts'
import { openDatabase } from '../../store/database.ts'
import { createPatientStore } from '../../patients/patients.ts'
import { createPostgresReadingStore } from '../../readings/postgres-store.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { waitFor } from '../helpers/wait.ts'

const { log, testDb, db, deps, app, token, headers } = await startApiFixture(t, 'hardening test')
const other = await deps.tokens.create('hardening test, second token', 'admin')

async function buildWith (t: Test, overrides: Partial<ApiDeps>): Promise<FastifyInstance> {
  const built = await buildApi({ ...deps, ...overrides })
  t.teardown(() => built.close())
  return built
}

/** A 429 the way every client may rely on: stable code, Retry-After within the window. */
function assertRateLimited (t: Test, res: Awaited<ReturnType<FastifyInstance['inject']>>, what: string): void {
  t.equal(res.statusCode, 429, what)
  t.same(Object.keys(res.json()).sort(), ['code', 'message'], `${what}: {code, message}`)
  t.equal(res.json().code, 'VIGIL_ERR_RATE_LIMITED', what)
  const retryAfter = Number(res.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `${what}: Retry-After ${String(res.headers['retry-after'])}`)
  t.equal(res.headers['x-ratelimit-remaining'], '0', what)
}

t.test('security headers on API responses, errors and 404s; no-store; no x-powered-by', async (t) => {
  const responses = {
    ok: await app.inject({ method: 'GET', url: '/v1/patients', headers }),
    unauthenticated: await app.inject({ method: 'GET', url: '/v1/patients' }),
    notFound: await app.inject({ method: 'GET', url: '/v1/nope' }),
    health: await app.inject({ method: 'GET', url: '/healthz' })
  }
  t.equal(responses.ok.statusCode, 200)
  for (const [name, res] of Object.entries(responses)) {
    const h = res.headers
    t.match(h['content-security-policy'], /default-src 'none'/, `${name}: CSP forbids everything`)
    t.match(h['content-security-policy'], /frame-ancestors 'none'/, name)
    t.notMatch(h['content-security-policy'], /upgrade-insecure-requests/, name)
    t.equal(h['x-content-type-options'], 'nosniff', name)
    t.equal(h['x-frame-options'], 'DENY', name)
    t.match(h['strict-transport-security'], /^max-age=\d+/, name)
    t.equal(h['referrer-policy'], 'no-referrer', name)
    t.equal(h['cross-origin-resource-policy'], 'same-origin', name)
    t.equal(h['cache-control'], 'no-store', `${name}: no-store`)
    t.notOk('x-powered-by' in h, `${name}: no x-powered-by`)
  }
})

t.test('/docs: the UI is served with a CSP that allows its own assets', async (t) => {
  const page = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  t.equal(page.headers['content-security-policy'], docsContentSecurityPolicy, 'the docs policy, not the API one')
  const csp = page.headers['content-security-policy'] as string
  t.match(csp, /script-src 'self'/)
  t.match(csp, /style-src 'self'/)
  t.match(csp, /img-src 'self' data:/, 'swagger-ui.css draws its icons with data: SVGs')

  // 'self' without 'unsafe-inline' works only if the page has no inline script or style.
  const html = page.body
  t.notMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline <script>')
  t.notMatch(html, /<style/i, 'no inline <style>')
  t.notMatch(html, /\sstyle=/i, 'no style attributes')
  const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => new URL(m[1]!, 'http://vigil.test/docs/').pathname)
  t.ok(assets.length >= 5, `${assets.length} assets referenced`)
  for (const asset of [...assets, '/docs/json']) {
    const res = await app.inject({ method: 'GET', url: asset })
    t.equal(res.statusCode, 200, asset)
    t.ok(asset.startsWith('/docs/'), `${asset} is same-origin, under /docs`)
  }
  const initializer = await app.inject({ method: 'GET', url: '/docs/static/swagger-initializer.js' })
  t.match(initializer.body, /validatorUrl: null/, 'the spec is never sent to validator.swagger.io')
})

t.test('authenticated traffic is limited per token', async (t) => {
  const limited = await buildWith(t, { rateLimitPerMinute: 3 })
  const remaining: unknown[] = []
  for (let i = 0; i < 3; i++) {
    const res = await limited.inject({ method: 'GET', url: '/v1/patients', headers })
    t.equal(res.statusCode, 200, `request ${i + 1}`)
    t.equal(res.headers['x-ratelimit-limit'], '3')
    remaining.push(res.headers['x-ratelimit-remaining'])
  }
  t.same(remaining, ['2', '1', '0'])
  const refused = await limited.inject({ method: 'GET', url: '/v1/patients', headers })
  assertRateLimited(t, refused, 'fourth request')
  t.equal(refused.headers['cache-control'], 'no-store')
  t.match(refused.headers['content-security-policy'], /default-src 'none'/)

  const posted = await limited.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'x' } })
  assertRateLimited(t, posted, 'every route shares the token budget')
  const second = await limited.inject({ method: 'GET', url: '/v1/patients', headers: { authorization: `Bearer ${other.token}` } })
  t.equal(second.statusCode, 200, 'another token from the same address has its own budget')
  const health = await limited.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 200, 'the address budget is untouched by authenticated traffic')
})

t.test('unauthenticated traffic is limited per address', async (t) => {
  const limited = await buildWith(t, { unauthenticatedRateLimitPerMinute: 3 })
  const from = (remoteAddress: string) => limited.inject({ method: 'GET', url: '/docs/json', remoteAddress })
  for (let i = 0; i < 3; i++) t.equal((await from('192.0.2.1')).statusCode, 200, `request ${i + 1}`)
  assertRateLimited(t, await from('192.0.2.1'), 'fourth request')
  assertRateLimited(t, await limited.inject({ method: 'GET', url: '/nope', remoteAddress: '192.0.2.1' }), 'every public route shares it')
  t.equal((await limited.inject({ method: 'GET', url: '/metrics', remoteAddress: '192.0.2.1' })).statusCode, 200, 'except health and metrics (their own budget)')
  t.equal((await from('192.0.2.2')).statusCode, 200, 'another address has its own budget')
  const authenticated = await limited.inject({ method: 'GET', url: '/v1/patients', headers: { ...headers }, remoteAddress: '192.0.2.2' })
  t.equal(authenticated.statusCode, 200)
})

t.test('404s count against the address', async (t) => {
  const limited = await buildWith(t, { unauthenticatedRateLimitPerMinute: 3 })
  const urls = ['/admin', '/v1/nope', '/.env']
  for (const url of urls) {
    const res = await limited.inject({ method: 'GET', url, remoteAddress: '198.51.100.7' })
    t.equal(res.statusCode, 404, url)
    t.equal(res.json().code, 'VIGIL_ERR_NOT_FOUND')
  }
  assertRateLimited(t, await limited.inject({ method: 'GET', url: '/wp-login.php', remoteAddress: '198.51.100.7' }), 'fourth unknown path')
  assertRateLimited(t, await limited.inject({ method: 'DELETE', url: '/v1/patients', remoteAddress: '198.51.100.7' }), 'unknown method')
  const elsewhere = await limited.inject({ method: 'GET', url: '/admin', remoteAddress: '198.51.100.8' })
  t.equal(elsewhere.statusCode, 404, 'another address is not affected')
})

t.test('failed authentication: bad tokens get 429 quickly, per address, without more lookups', async (t) => {
  let lookups = 0
  const counting: ApiTokenStore = {
    ...deps.tokens,
    authenticate: async (presented) => { lookups++; return await deps.tokens.authenticate(presented) }
  }
  const limited = await buildWith(t, { unauthenticatedRateLimitPerMinute: 3, tokens: counting })
  const attempt = (authorization: string | undefined, remoteAddress = '203.0.113.9') => limited.inject({
    method: 'GET', url: '/v1/patients', remoteAddress, headers: authorization === undefined ? {} : { authorization }
  })
  for (const bad of ['Bearer vgt_guess-1', 'Bearer vgt_guess-2', undefined]) {
    const res = await attempt(bad)
    t.equal(res.statusCode, 401, String(bad))
    t.equal(res.json().code, 'VIGIL_ERR_UNAUTHENTICATED')
  }
  t.equal(lookups, 2, 'a missing header needs no lookup')
  assertRateLimited(t, await attempt('Bearer vgt_guess-3'), 'fourth failure')
  const before = lookups
  for (let i = 0; i < 20; i++) assertRateLimited(t, await attempt(`Bearer vgt_guess-${i + 4}`), `hammering ${i + 1}`)
  t.equal(lookups, before, 'once limited, bad tokens are refused before the database is asked')

  const locked = await attempt(`Bearer ${token}`)
  assertRateLimited(t, locked, 'the exhausted address is locked out for the window, even with a valid token')
  const elsewhere = await attempt(`Bearer ${token}`, '203.0.113.10')
  t.equal(elsewhere.statusCode, 200, 'other addresses are unaffected')
  const wrongElsewhere = await attempt('Bearer vgt_guess-x', '203.0.113.10')
  t.equal(wrongElsewhere.statusCode, 401, 'counts are per address')
})

t.test('IPv6 clients are counted per /64', async (t) => {
  const limited = await buildWith(t, { unauthenticatedRateLimitPerMinute: 2 })
  const from = (remoteAddress: string) => limited.inject({ method: 'GET', url: '/nope', remoteAddress })
  t.equal((await from('2001:db8:1:1::1')).statusCode, 404)
  t.equal((await from('2001:db8:1:1::2')).statusCode, 404)
  assertRateLimited(t, await from('2001:db8:1:1:ffff::3'), 'a third address in the same /64')
  t.equal((await from('2001:db8:1:2::1')).statusCode, 404, 'the next /64 is another client')
})

t.test('behind a trusted proxy, the forwarded client address is the key', async (t) => {
  const proxied = await buildWith(t, { unauthenticatedRateLimitPerMinute: 2, trustProxy: '127.0.0.1' })
  const from = (client: string, remoteAddress = '127.0.0.1') =>
    proxied.inject({ method: 'GET', url: '/nope', remoteAddress, headers: { 'x-forwarded-for': client } })
  t.equal((await from('192.0.2.60')).statusCode, 404)
  t.equal((await from('192.0.2.60')).statusCode, 404)
  assertRateLimited(t, await from('192.0.2.60'), 'the client, not the proxy, spent its budget')
  t.equal((await from('192.0.2.61')).statusCode, 404, 'another client behind the same proxy')
  const spoofed = await buildWith(t, { unauthenticatedRateLimitPerMinute: 1 })
  const direct = (forwarded: string) => spoofed.inject({ method: 'GET', url: '/nope', remoteAddress: '192.0.2.70', headers: { 'x-forwarded-for': forwarded } })
  t.equal((await direct('10.0.0.1')).statusCode, 404)
  assertRateLimited(t, await direct('10.0.0.2'), 'without trustProxy a forged X-Forwarded-For buys nothing')
})

t.test('size limits: body 413, URL 414, header 431, with stable codes', async (t) => {
  const huge = await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'x'.repeat(70_000) } })
  t.equal(huge.statusCode, 413)
  t.equal(huge.json().code, 'VIGIL_ERR_PAYLOAD_TOO_LARGE')
  const declared = await app.inject({
    method: 'POST', url: '/v1/patients', headers: { ...headers, 'content-type': 'application/json', 'content-length': String(10 * 1024 * 1024) }, payload: '{}'
  })
  t.equal(declared.statusCode, 413, 'a declared Content-Length past the limit is refused unread')
  t.equal(declared.json().code, 'VIGIL_ERR_PAYLOAD_TOO_LARGE')

  const longUrl = await app.inject({ method: 'GET', url: `/v1/patients?cursor=${'a'.repeat(5000)}`, headers })
  t.equal(longUrl.statusCode, 414)
  t.equal(longUrl.json().code, 'VIGIL_ERR_URL_TOO_LONG')
  t.notMatch(longUrl.body, /aaaa/, 'the URL is not echoed')
  const longParam = await app.inject({ method: 'GET', url: `/v1/patients/${'a'.repeat(150)}`, headers })
  t.equal(longParam.statusCode, 414, 'the router refuses a path parameter over 100 characters')
  t.same(Object.keys(longParam.json()).sort(), ['code', 'message'])
  t.equal(longParam.json().code, 'VIGIL_ERR_URL_TOO_LONG')
  t.equal(longParam.headers['cache-control'], 'no-store')
  const badEncoding = await app.inject({ method: 'GET', url: '/v1/patients/%E0%A4%A', headers })
  t.equal(badEncoding.statusCode, 400)
  t.equal(badEncoding.json().code, 'VIGIL_ERR_VALIDATION')

  // Header limits are Node's HTTP parser's: only a real socket reaches them.
  const listening = await buildWith(t, {})
  await listening.listen({ port: 0, host: '127.0.0.1' })
  const { port } = listening.server.address() as net.AddressInfo
  const raw = async (request: string): Promise<string> => await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.end(request))
    let response = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => { response += chunk })
    socket.on('close', () => resolve(response))
    socket.on('error', reject)
  })
  const bigHeader = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(17_000)}\r\n\r\n`)
  t.match(bigHeader, /^HTTP\/1\.1 431 /)
  t.same(JSON.parse(bigHeader.slice(bigHeader.indexOf('\r\n\r\n') + 4)).code, 'VIGIL_ERR_HEADERS_TOO_LARGE')
  const bigUrl = await raw(`GET /healthz?${'a'.repeat(17_000)} HTTP/1.1\r\nHost: x\r\n\r\n`)
  t.match(bigUrl, /^HTTP\/1\.1 431 /, 'the request line counts toward the header limit')
  const garbage = await raw('NOT HTTP AT ALL\r\n\r\n')
  t.match(garbage, /^HTTP\/1\.1 400 /)
  t.match(garbage, /"code":"VIGIL_ERR_VALIDATION"/)
  const fine = await fetch(`http://127.0.0.1:${port}/healthz`)
  t.equal(fine.status, 200, 'the server still answers')
})

/**
 * Keeps the event loop busy in 100 ms slices, as a stream of CPU-heavy work would, until
 * stopped. Slices, not one long block: the loop's timer ticks between them are what the
 * sampler averages (a single block's gap can fall between two samples and go unseen).
 */
function saturateEventLoop (sliceMs = 100): { stop: () => Promise<void> } {
  let running = true
  const done = (async () => {
    while (running) {
      const until = Date.now() + sliceMs
      while (Date.now() < until) { /* busy */ }
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  return { stop: async () => { running = false; await done } }
}

/** Until start-up (which compiles schemas on the loop) has left the samples. */
async function settle (t: Test, app: FastifyInstance, sampleMs: number): Promise<void> {
  await sleep(2 * sampleMs)
  t.ok(await waitFor('not under pressure at rest', () => !app.isUnderPressure(), { timeoutMs: 10 * sampleMs, everyMs: 1 }), 'not under pressure at rest')
}

t.test('load shedding: event-loop delay makes /v1 answer 503; /healthz says why; then it recovers', async (t) => {
  const shedding = await buildWith(t, { maxEventLoopDelayMs: 50, maxEventLoopUtilization: 0, loadSampleIntervalMs: 250 })
  await shedding.ready()
  await settle(t, shedding, 250)
  t.equal((await shedding.inject({ method: 'GET', url: '/v1/patients', headers })).statusCode, 200, 'not shedding at rest')

  const load = saturateEventLoop()
  try {
    t.ok(await waitFor('the delay was measured', () => shedding.isUnderPressure(), { timeoutMs: 3000, everyMs: 1 }), 'the delay was measured')
    const [api, notFound, health, metrics] = await Promise.all([
      shedding.inject({ method: 'GET', url: '/v1/patients', headers }),
      shedding.inject({ method: 'GET', url: '/nope' }),
      shedding.inject({ method: 'GET', url: '/healthz' }),
      shedding.inject({ method: 'GET', url: '/metrics' })
    ])
    t.equal(api.statusCode, 503)
    t.same(Object.keys(api.json()).sort(), ['code', 'message'])
    t.equal(api.json().code, 'VIGIL_ERR_UNAVAILABLE')
    t.equal(api.headers['retry-after'], '5')
    t.equal(api.headers['cache-control'], 'no-store')
    t.equal(notFound.statusCode, 503, 'everything else is shed too')
    t.equal(health.statusCode, 503, '/healthz is answered, not shed')
    t.same(health.json(), { status: 'unavailable', checks: { postgres: 'ok', readings: 'ok', load: 'failed' } })
    t.equal(metrics.statusCode, 200, '/metrics stays available while shedding')
  } finally {
    await load.stop()
  }

  t.ok(await waitFor('pressure passes', () => !shedding.isUnderPressure(), { timeoutMs: 3000, everyMs: 1 }), 'pressure passes')
  t.equal((await shedding.inject({ method: 'GET', url: '/v1/patients', headers })).statusCode, 200, 'served again')
})

t.test('load shedding at the default 1 s limit: its coarse 100 ms tick still sees a loop whose turns take 1.3 s', async (t) => {
  t.equal(delayResolutionMs(apiLimitDefaults.maxEventLoopDelayMs, apiLimitDefaults.loadSampleIntervalMs), 100, 'a tick every 100 ms against the default limit')
  t.equal(delayResolutionMs(50), 10, 'no finer than 10 ms')
  t.equal(delayResolutionMs(60_000), 100, 'no coarser than 100 ms')
  t.equal(delayResolutionMs(1000, 200), 50, 'a short sample ticks faster: several ticks each')
  t.equal(delayResolutionMs(1000, 10), 10, 'but no finer than 10 ms')
  // Samples of 3 s: several turns each, so the mean of the ticks decides (a sample with no tick
  // at all would read as a stall whatever the resolution).
  const sampleMs = 3000
  const shedding = await buildWith(t, { maxEventLoopDelayMs: apiLimitDefaults.maxEventLoopDelayMs, maxEventLoopUtilization: 0, loadSampleIntervalMs: sampleMs })
  await shedding.ready()
  await settle(t, shedding, sampleMs)
  // Turns of 0.6 s are a busy loop, not a stalled one: under the limit.
  let load = saturateEventLoop(600)
  try {
    await sleep(2.2 * sampleMs)
    t.notOk(shedding.isUnderPressure(), 'turns of 0.6 s are under the 1 s limit')
  } finally {
    await load.stop()
  }
  load = saturateEventLoop(1300)
  try {
    t.ok(await waitFor('the stall was measured', () => shedding.isUnderPressure(), { timeoutMs: 3 * sampleMs, everyMs: 1 }), 'turns of 1.3 s are past it')
    const res = await shedding.inject({ method: 'GET', url: '/v1/patients', headers })
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
  } finally {
    await load.stop()
  }
  t.ok(await waitFor('pressure passes', () => !shedding.isUnderPressure(), { timeoutMs: 3 * sampleMs, everyMs: 1 }), 'pressure passes')
})

t.test('load shedding: event-loop utilization', async (t) => {
  const shedding = await buildWith(t, { maxEventLoopDelayMs: 0, maxEventLoopUtilization: 0.8, loadSampleIntervalMs: 250 })
  await shedding.ready()
  await settle(t, shedding, 250)
  const load = saturateEventLoop()
  try {
    t.ok(await waitFor('a saturated sample was measured', () => shedding.isUnderPressure(), { timeoutMs: 3000, everyMs: 1 }), 'a saturated sample was measured')
    const res = await shedding.inject({ method: 'GET', url: '/v1/patients', headers })
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
    t.equal(res.headers['retry-after'], '5')
  } finally {
    await load.stop()
  }
  t.ok(await waitFor('the next, idle sample ends it', () => !shedding.isUnderPressure(), { timeoutMs: 3000, everyMs: 1 }), 'the next, idle sample ends it')
})

t.test('limits are validated when the API is built, naming the option', async (t) => {
  const bad: Array<[Partial<ApiDeps>, RegExp]> = [
    [{ rateLimitPerMinute: 0 }, /rateLimitPerMinute must be an integer of at least 1/],
    [{ unauthenticatedRateLimitPerMinute: 1.5 }, /unauthenticatedRateLimitPerMinute/],
    [{ maxEventLoopUtilization: 1.5 }, /maxEventLoopUtilization must be between 0 and 1/],
    [{ maxEventLoopDelayMs: -1 }, /maxEventLoopDelayMs/],
    [{ maxHeapUsedBytes: -1 }, /maxHeapUsedBytes/],
    [{ loadSampleIntervalMs: 5 }, /loadSampleIntervalMs must be an integer of at least 10/]
  ]
  for (const [options, message] of bad) await t.rejects(buildApi({ ...deps, ...options }), message, JSON.stringify(options))
  const unset = await buildWith(t, { rateLimitPerMinute: undefined })
  t.equal((await unset.inject({ method: 'GET', url: '/v1/patients', headers })).headers['x-ratelimit-limit'], '6000', 'undefined means the default')
})

// ---------------------------------------------------------------------------------------
// Postgres outages, injected for real: a TCP proxy between the API's pool and the server.
// ---------------------------------------------------------------------------------------

interface PostgresProxy {
  port: number
  /** Drops every connection and stops listening: the server is gone (connections refused). */
  cut (): Promise<void>
  /** Listens again but never answers: a network partition (connects hang). */
  blackhole (): Promise<void>
  /** Forwards again, on the same port. */
  restore (): Promise<void>
  close (): Promise<void>
}

async function startPostgresProxy (target: URL): Promise<PostgresProxy> {
  const sockets = new Set<net.Socket>()
  let forwarding = true
  let server: net.Server | null = null
  const track = (socket: net.Socket): void => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
  }
  const listen = async (port: number): Promise<number> => {
    const s = net.createServer((client) => {
      track(client)
      if (!forwarding) return
      const upstream = net.connect(Number(target.port || 5432), target.hostname)
      track(upstream)
      client.pipe(upstream).pipe(client)
      client.on('close', () => upstream.destroy())
      upstream.on('close', () => client.destroy())
    })
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject)
      s.listen(port, '127.0.0.1', resolve)
    })
    server = s
    return (s.address() as net.AddressInfo).port
  }
  const stop = async (): Promise<void> => {
    const s = server
    server = null
    for (const socket of sockets) socket.destroy()
    if (s !== null) await new Promise((resolve) => s.close(resolve))
  }
  const port = await listen(0)
  return {
    port,
    cut: stop,
    blackhole: async () => { await stop(); forwarding = false; await listen(port) },
    restore: async () => { await stop(); forwarding = true; await listen(port) },
    close: stop
  }
}

t.test('Postgres outage: 503 with Retry-After (never 500), also from the token lookup; recovers by itself', async (t) => {
  const direct = new URL(testDb.url)
  const proxy = await startPostgresProxy(direct)
  t.teardown(() => proxy.close())
  const viaProxy = new URL(testDb.url)
  viaProxy.host = `127.0.0.1:${proxy.port}`
  // The production pool (openDatabase: bounded connect wait, 1 s here instead of 5), through the proxy.
  const proxiedDb = await openDatabase({ databaseUrl: viaProxy.toString(), dataDir: '', log, connectTimeoutMs: 1000 })
  t.teardown(() => proxiedDb.close())
  const api = await buildWith(t, {
    db: proxiedDb,
    tokens: createApiTokenStore(proxiedDb.pool),
    patients: createPatientStore(proxiedDb.pool),
    readings: createPostgresReadingStore(proxiedDb.pool)
  })
  const get = (authorization = `Bearer ${token}`) => api.inject({ method: 'GET', url: '/v1/patients', headers: { authorization } })
  const assertUnavailable = (res: Awaited<ReturnType<typeof get>>, what: string): void => {
    t.equal(res.statusCode, 503, what)
    t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE', what)
    t.equal(res.headers['retry-after'], '5', what)
    t.notMatch(res.body, /ECONNREFUSED|127\.0\.0\.1|terminated/, `${what}: no internals`)
  }
  t.equal((await get()).statusCode, 200, 'healthy through the proxy')

  await proxy.cut()
  assertUnavailable(await get(), 'server gone: the token lookup fails')
  assertUnavailable(await get('Bearer vgt_not-a-token'), 'a bad token is not a 401 while its lookup cannot run')
  const health = await api.inject({ method: 'GET', url: '/healthz' })
  t.equal(health.statusCode, 503)
  t.equal(health.json().checks.postgres, 'failed')

  await proxy.blackhole()
  const started = Date.now()
  assertUnavailable(await get(), 'partition: connects hang until the pool gives up')
  t.ok(Date.now() - started < 15_000, `answered in ${Date.now() - started} ms`)

  await proxy.restore()
  const back = await get()
  t.equal(back.statusCode, 200, 'recovers without a restart')
  t.equal((await api.inject({ method: 'GET', url: '/healthz' })).statusCode, 200)
})

t.test('a pool that was ended (shutdown) is a 503 too', async (t) => {
  const ended = (await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })).pool
  await ended.end()
  const api = await buildWith(t, { tokens: createApiTokenStore(ended), patients: createPatientStore(ended) })
  const res = await api.inject({ method: 'GET', url: '/v1/patients', headers })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'VIGIL_ERR_UNAVAILABLE')
  t.equal(res.headers['retry-after'], '5')
})
