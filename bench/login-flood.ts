import http from 'node:http'
import { parseArgs } from 'node:util'
import mqtt from 'mqtt'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { adminToken, startTestVigil } from '../test/helpers/vigil.ts'

// `npm run bench:login-flood`: how long a device's MQTT CONNECT (CONNECT → CONNACK, real secret
// check) takes while 60 clients from one address keep failing logins (issue 11 item 6), against
// the same without a flood. Vigil runs in this process (on the machine's PostgreSQL) with the
// production password cost (scrypt N=2^17). Three phases, each on a fresh Vigil:
//   quiet     no flood
//   flood     the flood against the default login budgets (20/min per address, 10/min per email)
//   unbudgeted the flood with the login budgets and the API's address limit lifted, so every
//              login reaches scrypt: what separate device/password budgets alone buy.
// A real user's login from another address during each flood is timed too (null: not done
// 15 s after the measurement ended).

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '12' },
    flooders: { type: 'string', default: '60' },
    help: { type: 'boolean', default: false }
  }
})
if (args.help) {
  process.stdout.write('usage: npm run bench:login-flood -- [--seconds 12] [--flooders 60]\nNeeds PostgreSQL on 127.0.0.1:5432 (trust auth).\n')
  process.exit(0)
}
const seconds = Number(args.seconds)
const flooders = Number(args.flooders)

function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN
}

/** Connections from a given local address (127.0.0.0/8 all reach lo), one per request. */
function clientFrom (localAddress: string): http.Agent {
  return new http.Agent({ keepAlive: false, localAddress } as http.AgentOptions)
}

/** POST JSON, resolving with status and ms. */
async function post (port: number, path: string, body: unknown, agent: http.Agent): Promise<{ status: number, ms: number }> {
  const started = performance.now()
  return await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json' }, agent }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started }))
    })
    req.on('error', reject)
    req.end(JSON.stringify(body))
  })
}

async function phase (name: 'quiet' | 'flood' | 'unbudgeted') {
  const db = await createTestDatabase()
  const env: Record<string, string> = { DATABASE_URL: db.url }
  if (name === 'unbudgeted') {
    Object.assign(env, { VIGIL_LOGIN_RATE_PER_ADDRESS: '1000000', VIGIL_LOGIN_RATE_PER_ACCOUNT: '1000000', API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE: '1000000' })
  }
  const vigil = await startTestVigil(env)
  try {
    const device = await vigil.provision()
    const created = await vigil.api<{ id: string }>('POST', '/v1/users', { email: 'real.nurse@example.org', displayName: 'Real Nurse', password: 'correct horse 42', roles: ['nurse'] }, adminToken)
    if (created.status !== 201) throw new Error(`create user: ${created.status}`)

    // The flooding clients run in this process (a refused one retries 5 times a second, so
    // they cost its event loop little); logins still queued at the end are abandoned.
    const flood = name === 'quiet' ? null : startFlood(vigil.httpPort, flooders)
    process.stderr.write(`${name}: flooding\n`)
    // Let the flood fill the password queue first.
    if (flood !== null) await new Promise((resolve) => setTimeout(resolve, 1000))

    const connects: number[] = []
    let realLogin: { status: number, ms: number } | null = null
    const realLoginDone = name === 'quiet'
      ? Promise.resolve()
      : post(vigil.httpPort, '/v1/auth/login', { email: 'real.nurse@example.org', password: 'correct horse 42' }, clientFrom('127.0.0.60')).then((r) => { realLogin = r })
    const deadline = performance.now() + seconds * 1000
    while (performance.now() < deadline) {
      const started = performance.now()
      const client = await mqtt.connectAsync(vigil.mqttUrl(), {
        clientId: device.deviceId, username: device.deviceId, password: device.password, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 60_000
      })
      connects.push(performance.now() - started)
      await client.endAsync()
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    process.stderr.write(`${name}: ${connects.length} connects measured\n`)
    // Bounded: a login stuck behind the flood is reported as not done (null) rather than waited for.
    await Promise.race([realLoginDone, new Promise((resolve) => setTimeout(resolve, 15_000))])
    process.stderr.write(`${name}: stopping the flood\n`)
    const logins = flood?.stop() ?? {}
    connects.sort((a, b) => a - b)
    return {
      phase: name,
      connects: connects.length,
      connectMedianMs: Math.round(percentile(connects, 0.5)),
      connectP95Ms: Math.round(percentile(connects, 0.95)),
      connectMaxMs: Math.round(connects.at(-1) ?? NaN),
      floodLogins: logins,
      realLoginMs: realLogin === null ? null : Math.round((realLogin as { ms: number }).ms),
      realLoginStatus: realLogin === null ? null : (realLogin as { status: number }).status
    }
  } finally {
    await vigil.close()
    await db.drop()
  }
}

const rows = []
const only = process.env.BENCH_PHASES?.split(',')
for (const name of ['quiet', 'flood', 'unbudgeted'] as const) {
  if (only !== undefined && !only.includes(name)) continue
  const row = await phase(name)
  rows.push(row)
  process.stdout.write(`${JSON.stringify(row)}\n`)
}
console.table(rows.map((r) => ({ ...r, floodLogins: JSON.stringify(r.floodLogins) })))

/** `count` clients failing logins from 127.0.0.50 until stopped; stop() returns counts by status ('sent': requests sent). */
function startFlood (port: number, count: number): { stop (): Record<string, number> } {
  let stopped = false
  const logins: Record<string, number> = {}
  for (let i = 0; i < count; i++) {
    const agent = clientFrom('127.0.0.50')
    void (async () => {
      while (!stopped) {
        logins.sent = (logins.sent ?? 0) + 1
        const { status } = await post(port, '/v1/auth/login', { email: `nobody${i}@example.org`, password: 'wrong password 42' }, agent).catch(() => ({ status: 0, ms: 0 }))
        logins[String(status)] = (logins[String(status)] ?? 0) + 1
        // A refused client tries again 5 times a second (fresh connections: the loopback's
        // ephemeral ports in TIME_WAIT stay well below their limit).
        if (status !== 401) await new Promise((resolve) => setTimeout(resolve, 200))
      }
    })()
  }
  return { stop () { stopped = true; return { ...logins } } }
}
