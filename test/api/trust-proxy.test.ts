import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { Test } from 'tap'
import { buildApi } from '../../api/app.ts'
import { loadConfig } from '../../config/config.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

// Issue 16: behind a reverse proxy every request had the proxy's address, so one client's
// flood locked out everyone and every audit row named the proxy. TRUST_PROXY, read the way
// vigil.ts reads it, on a real socket from 127.0.0.1 (the "proxy" here).
const { deps, db, headers } = await startApiFixture(t, 'trust proxy test')

async function listening (env: Record<string, string>): Promise<string> {
  const trusted = loadConfig(env).trustedProxies
  const app = await buildApi({ ...deps, unauthenticatedRateLimitPerMinute: 2, trustProxy: trusted.length === 0 ? false : trusted })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

async function status (url: string, forwardedFor: string): Promise<number> {
  const res = await fetch(url, { headers: { 'x-forwarded-for': forwardedFor } })
  await res.arrayBuffer()
  return res.status
}

async function auditAddressOf (t: Test, base: string, forwardedFor: string): Promise<string | null> {
  const res = await fetch(`${base}/v1/patients`, {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json', 'x-forwarded-for': forwardedFor },
    body: JSON.stringify({ displayName: 'Proxy Test' })
  })
  await res.arrayBuffer()
  t.equal(res.status, 201, 'patient created')
  const rows = await db.pool.query('SELECT source_address FROM audit_log WHERE request_id = $1', [res.headers.get('x-request-id')])
  t.ok(rows.rows.length > 0, 'the request wrote an audit row')
  return rows.rows[0]?.source_address ?? null
}

t.test('from a trusted proxy, limits and audit rows see the forwarded client', async (t) => {
  const base = await listening({ TRUST_PROXY: '10.9.9.9, 127.0.0.0/8' })
  t.equal(await status(`${base}/nope`, '192.0.2.10'), 404)
  t.equal(await status(`${base}/nope`, '192.0.2.10'), 404)
  t.equal(await status(`${base}/nope`, '192.0.2.10'), 429, 'the client spent its budget')
  t.equal(await status(`${base}/nope`, '192.0.2.11'), 404, 'another client behind the same proxy has its own')
  t.equal(await auditAddressOf(t, base, '192.0.2.12'), '192.0.2.12', 'the audit row names the client')
})

t.test('from an address not in TRUST_PROXY, forwarded headers are ignored', async (t) => {
  const base = await listening({ TRUST_PROXY: '10.9.9.9' })
  // First: once 127.0.0.1 has spent its budget, even a valid token from it gets 429.
  t.equal(await auditAddressOf(t, base, '192.0.2.23'), '127.0.0.1', 'the audit row names the socket\'s address')
  t.equal(await status(`${base}/nope`, '192.0.2.20'), 404)
  t.equal(await status(`${base}/nope`, '192.0.2.21'), 404)
  t.equal(await status(`${base}/nope`, '192.0.2.22'), 429, 'a forged X-Forwarded-For buys no fresh budget')
})

t.test('TRUST_PROXY accepts addresses and CIDR ranges only', async (t) => {
  t.same(loadConfig({}).trustedProxies, [], 'unset: no proxy trusted')
  t.same(loadConfig({ TRUST_PROXY: '10.0.0.5,172.16.0.0/12,fd00::/8' }).trustedProxies, ['10.0.0.5', '172.16.0.0/12', 'fd00::/8'])
  for (const bad of ['true', 'loopback', '10.0.0.0/33', '10.0.0.1/8/1', '1']) {
    t.throws(() => loadConfig({ TRUST_PROXY: bad }), /^TRUST_PROXY must be a comma-separated list/, bad)
  }
})

t.test('MQTT_PROXY_PROTOCOL=true needs TRUST_PROXY', async (t) => {
  t.equal(loadConfig({}).mqttProxyProtocol, false)
  t.throws(() => loadConfig({ MQTT_PROXY_PROTOCOL: 'true' }), /^MQTT_PROXY_PROTOCOL=true needs TRUST_PROXY/)
  t.equal(loadConfig({ MQTT_PROXY_PROTOCOL: 'true', TRUST_PROXY: '10.0.0.5' }).mqttProxyProtocol, true)
})
