import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import mqtt from 'mqtt'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { provisionDevice } from '../test/helpers/provision.ts'
import { spawnVigil } from '../test/helpers/vigil-process.ts'
import { freePort, processUsage } from './child-processes.ts'

// What the cluster bus costs per reading (issue 16): the same QoS 1 load through one Vigil
// process without REDIS_URL and with it (a private redis-server), Vigil's CPU (all its
// threads, from /proc) and Redis's (INFO cpu) per acknowledged reading. Telemetry stays off
// the bus, so the difference should be near zero; what remains is heartbeats and probes.
//   npx tsx bench/cluster-cost.ts [--devices 200] [--rate 500] [--seconds 20] [--rounds 2]

const { values } = parseArgs({ options: { devices: { type: 'string', default: '200' }, rate: { type: 'string', default: '500' }, seconds: { type: 'string', default: '20' }, rounds: { type: 'string', default: '2' } } })
const devicesCount = Number(values.devices)
const rate = Number(values.rate)
const seconds = Number(values.seconds)
const rounds = Number(values.rounds)
const token = 'cluster-bench-admin-token-0123456789abcdef'

/** Redis's CPU (µs) and the commands it has processed, so far. */
async function redisUsage (redis: Redis): Promise<{ cpuUs: number, commands: number }> {
  const info = await redis.info()
  const field = (name: string): number => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? 0)
  // INFO itself is one command: not counted.
  return { cpuUs: (field('used_cpu_sys') + field('used_cpu_user')) * 1e6, commands: field('total_commands_processed') - 1 }
}

async function run (label: string, redisUrl: string | null, redis: Redis | null): Promise<{ label: string, acked: number, vigilUsPerReading: number, redis: { idleUs: number, loadedUs: number, idleCommands: number, loadedCommands: number } | null }> {
  const database = await createTestDatabase()
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-cluster-bench-'))
  const env: Record<string, string> = { DATABASE_URL: database.url, VIGIL_ADMIN_TOKEN: token, LOG_LEVEL: 'warn' }
  if (redisUrl !== null) Object.assign(env, { REDIS_URL: redisUrl, REDIS_PREFIX: 'vigil-bench:', VIGIL_SECRET_KEY: randomBytes(32).toString('base64') })
  const vigil = await spawnVigil(env, dataDir)
  try {
    const base = `http://127.0.0.1:${vigil.httpPort}`
    const devices: Array<{ deviceId: string, password: string }> = []
    for (let i = 0; i < devicesCount; i += 20) devices.push(...await Promise.all(Array.from({ length: Math.min(20, devicesCount - i) }, async () => await provisionDevice(base, token))))
    const clients = await Promise.all(devices.map(async (d) => await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, { clientId: d.deviceId, username: d.deviceId, password: d.password, reconnectPeriod: 0, protocolVersion: 4 })))
    // Warm-up (caches, JIT), then the measured window.
    let seq = 0
    let acked = 0
    const publishFor = async (ms: number, count: boolean): Promise<void> => {
      const end = Date.now() + ms
      const interval = 1000 / rate
      let next = Date.now()
      const pending: Array<Promise<unknown>> = []
      let i = 0
      while (Date.now() < end) {
        const d = devices[i % devices.length]!
        const c = clients[i % clients.length]!
        i++
        seq++
        pending.push(c.publishAsync(`devices/${d.deviceId}/telemetry`, JSON.stringify({ seq, readings: [{ metric: 'heart_rate', value: 60 + (seq % 40), unit: '/min', ts: Date.now() - 500 }] }), { qos: 1 }).then(() => { if (count) acked++ }))
        next += interval
        const wait = next - Date.now()
        if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
      }
      await Promise.all(pending)
    }
    await publishFor(3000, false)
    // Redis over an idle window of the same length (heartbeats, probes, its own cron), then under load.
    const idleStart = redis === null ? null : await redisUsage(redis)
    if (redis !== null) await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
    const idleEnd = redis === null ? null : await redisUsage(redis)
    const before = processUsage(vigil.child.pid!)!
    const redisBefore = redis === null ? null : await redisUsage(redis)
    await publishFor(seconds * 1000, true)
    const after = processUsage(vigil.child.pid!)!
    const redisAfter = redis === null ? null : await redisUsage(redis)
    await Promise.all(clients.map(async (c) => await c.endAsync(true)))
    return {
      label,
      acked,
      vigilUsPerReading: (after.cpuUs - before.cpuUs) / acked,
      redis: redis === null
        ? null
        : { idleUs: idleEnd!.cpuUs - idleStart!.cpuUs, loadedUs: redisAfter!.cpuUs - redisBefore!.cpuUs, idleCommands: idleEnd!.commands - idleStart!.commands, loadedCommands: redisAfter!.commands - redisBefore!.commands }
    }
  } finally {
    vigil.child.kill('SIGTERM')
    await vigil.exited
    await database.drop()
    await fs.rm(dataDir, { recursive: true, force: true })
  }
}

const port = await freePort()
const redisDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bench-redis-'))
const redisServer = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], { stdio: 'ignore' })
const redis = new Redis(`redis://127.0.0.1:${port}`, { retryStrategy: (n) => (n > 50 ? null : 100) })
redis.on('error', () => {}) // until redis-server listens; the ping below waits for it
await redis.ping()
try {
  console.log(`${devicesCount} devices, ${rate} msg/s QoS 1 for ${seconds} s, Postgres store, ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}`)
  for (let r = 0; r < rounds; r++) {
    for (const [label, url] of [['one process (no REDIS_URL)', null], ['REDIS_URL set', `redis://127.0.0.1:${port}`]] as const) {
      const result = await run(label, url, url === null ? null : redis)
      const r = result.redis
      console.log(`${result.label.padEnd(28)} acked ${result.acked}  Vigil ${result.vigilUsPerReading.toFixed(1)} µs/reading` + (r === null
        ? ''
        : `  Redis: ${r.loadedCommands} commands under load vs ${r.idleCommands} idle (${((r.loadedCommands - r.idleCommands) / result.acked).toFixed(4)} per reading), CPU ${(r.loadedUs / 1000).toFixed(0)} ms under load vs ${(r.idleUs / 1000).toFixed(0)} ms idle (${((r.loadedUs - r.idleUs) / result.acked).toFixed(2)} µs per reading)`))
    }
  }
} finally {
  redis.disconnect()
  redisServer.kill('SIGKILL')
  await fs.rm(redisDir, { recursive: true, force: true })
}
