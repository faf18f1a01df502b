import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { brokerLimitsFrom, createBroker } from '../../broker/broker.ts'
import { loadConfig } from '../../config/config.ts'
import { startIngest } from '../../ingest/ingest.ts'
import { hashPassword, passwordScrypt, verifyPassword } from '../../access/passwords.ts'
import { deviceSecretScrypt, hashSecret, newSecret, verifySecret } from '../../crypto/secrets.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

// Issue 11 item 6: logins (scrypt N=2^17 each) must not stall device authentication, and a
// login flood is refused before any password is hashed. No timing assertions: ordering and
// limiter state only.

const { deps, app, headers: admin } = await startApiFixture(t, 'auth budgets admin', {
  access: { settings: { loginMaxFailures: 1000, loginsPerAddressPerMinute: 60, loginsPerAccountPerMinute: 1000 } },
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})
const password = 'correct horse 42'

async function newUser (email: string): Promise<void> {
  const res = await app.inject({ method: 'POST', url: '/v1/users', headers: admin, payload: { email, displayName: 'Budget Nurse', password, roles: ['nurse'] } })
  if (res.statusCode !== 201) throw new Error(`create user: ${res.statusCode} ${res.body}`)
}

async function login (email: string, pw: string, remoteAddress = '127.0.0.1') {
  return await app.inject({ method: 'POST', url: '/v1/auth/login', remoteAddress, payload: { email, password: pw } })
}

t.test('a device secret check is not queued behind password checks', async (t) => {
  // OWASP-strength-ish passwords (N=2^16) against a device secret (N=2^10): 64× the work each.
  const stored = await hashPassword(password, { N: 2 ** 16, r: 8, p: 1 })
  const secret = newSecret('vgd')
  const secretHash = await hashSecret(secret)
  const finished: string[] = []
  const passwords = [1, 2, 3].map(async (n) => {
    await verifyPassword('wrong password 42', stored)
    finished.push(`password ${n}`)
  })
  const device = verifySecret(secret, secretHash).then((ok) => { finished.push('device'); return ok })
  t.same(deviceSecretScrypt.stats(), { running: 1, waiting: 0, started: deviceSecretScrypt.stats().started }, 'the device check runs at once')
  t.equal(passwordScrypt.stats().waiting, 2, 'the password checks queue in their own budget')
  t.equal(await device, true)
  await Promise.all(passwords)
  t.equal(finished[0], 'device', `the device check finished first (order: ${finished.join(', ')})`)
})

t.test('the login past the per-address budget is refused 429 with Retry-After, before any password is hashed', async (t) => {
  await newUser('flood.target@example.org')
  const address = '198.51.100.7'
  const flood = await Promise.all(Array.from({ length: 60 }, async () => await login('flood.target@example.org', 'wrong password 42', address)))
  t.same([...new Set(flood.map((r) => r.statusCode))], [401], '60 wrong passwords: 401 each')
  const hashedBefore = passwordScrypt.stats().started
  const refused = await login('flood.target@example.org', password, address)
  t.equal(refused.statusCode, 429, 'the 61st login from that address is refused')
  t.equal(refused.json().code, 'VIGIL_ERR_RATE_LIMITED')
  t.ok(Number(refused.headers['retry-after']) >= 1, 'Retry-After is set')
  t.equal(passwordScrypt.stats().started, hashedBefore, 'refused before hashing')
  t.equal((await login('flood.target@example.org', password, '198.51.100.8')).statusCode, 200, 'another address still logs in')
})

t.test('the per-account budget refuses before hashing, whatever the address, and counts unknown emails too', async (t) => {
  const { app: app2 } = await startApiFixture(t, 'account budget admin', {
    access: { settings: { loginMaxFailures: 1000, loginsPerAddressPerMinute: 1000, loginsPerAccountPerMinute: 3 } },
    apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
  })
  const attempt = async (email: string, n: number) => await app2.inject({ method: 'POST', url: '/v1/auth/login', remoteAddress: `203.0.113.${n}`, payload: { email, password: 'wrong password 42' } })
  for (let n = 1; n <= 3; n++) t.equal((await attempt('Nobody@Example.org', n)).statusCode, 401)
  const hashedBefore = passwordScrypt.stats().started
  const refused = await attempt('nobody@example.org', 4)
  t.equal(refused.statusCode, 429, 'the 4th attempt on one account (any case) from a 4th address is refused')
  t.equal(refused.json().code, 'VIGIL_ERR_RATE_LIMITED')
  t.ok(Number(refused.headers['retry-after']) >= 1)
  t.equal(passwordScrypt.stats().started, hashedBefore, 'refused before hashing')
  t.equal((await attempt('someone.else@example.org', 5)).statusCode, 401, 'another account is not affected')
})

t.test('the MQTT connect timeout covers authentication: a CONNECT whose credential check hangs gets CONNACK 3', async (t) => {
  const ingest = await startIngest({ ...deps, spool: null })
  t.teardown(() => ingest.close())
  const config = loadConfig({ MQTT_PORT: '0', HTTP_PORT: '0', MQTT_CONNECT_TIMEOUT_SECONDS: '1' })
  let checks = 0
  const broker = await createBroker({
    host: '127.0.0.1',
    port: 0,
    limits: { ...brokerLimitsFrom(config), connectRatePerAddress: 0, authFailuresBeforeLockout: 0 },
    // The device registry, except that a credential check never answers (a stalled database or scrypt queue).
    devices: { ...deps.devices, authenticate: async () => { checks++; return await new Promise<string | null>(() => {}) } },
    ingest,
    metrics: deps.metrics,
    log: deps.log
  })
  t.teardown(() => broker.close())
  const deviceId = '00000000-0000-4000-8000-00000000abcd'
  const socket = net.connect({ port: broker.port, host: '127.0.0.1' })
  t.teardown(() => { socket.destroy() })
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const answer = new Promise<number | 'closed'>((resolve) => {
    parser.on('packet', (p) => resolve(p.cmd === 'connack' ? p.returnCode! : 'closed'))
    socket.on('data', (d: Buffer) => parser.parse(d))
    socket.on('close', () => resolve('closed'))
    socket.on('error', () => resolve('closed'))
  })
  const connect = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: deviceId, clean: true, keepalive: 30, username: deviceId, password: Buffer.from('secret') })
  socket.write(connect)
  // Bounded: the broker's 1 s timeout answers long before this fails the test.
  const bounded = await Promise.race([answer, new Promise<'no answer'>((resolve) => setTimeout(() => resolve('no answer'), 10_000).unref())])
  t.equal(checks, 1, 'the credential check was started')
  t.equal(bounded, 3, 'CONNACK 3 (server unavailable): retry later')
  const refused = (await deps.metrics.registry.getSingleMetric('vigil_mqtt_refused_total')!.get()).values
  t.ok(refused.some((v) => v.labels.reason === 'connect_timeout' && v.value >= 1), 'counted as connect_timeout')
})
