import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import pg from 'pg'
import { freePort, processUsage } from './child-processes.ts'
import type { SharedCpuMeter } from './rate-search.ts'
import { deleteKeysWithPrefix } from '../test/helpers/cluster.ts'

/**
 * The components Vigil's processes share in cluster mode, for the scale-out run: a Redis (a
 * private redis-server, or an existing one under a prefix of its own) and the CPU meters of
 * Redis and of PostgreSQL's backends serving the bench's database.
 */

export interface BenchRedis {
  url: string
  prefix: string
  /** The private redis-server's pid; null for an existing Redis (its CPU then comes from INFO). */
  pid: number | null
  meter: SharedCpuMeter
  /** Deletes the prefix's keys; stops the private server. */
  close: () => Promise<void>
}

async function listening (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => { socket.destroy(); resolve(true) })
    socket.on('error', () => resolve(false))
  })
}

/** Redis's own CPU (utime + stime, µs) from INFO cpu: the whole server's, whoever else uses it. */
async function redisInfoCpuUs (redis: Redis): Promise<number> {
  const info = await redis.info('cpu')
  const field = (name: string): number => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? 0)
  return (field('used_cpu_sys') + field('used_cpu_user')) * 1e6
}


/**
 * A Redis for the run. Without `url`: a private `redis-server` (no persistence) on a free
 * loopback port: its CPU (INFO cpu, getrusage of that process) is exactly the bench's. With
 * `url`: that Redis under a fresh prefix, CPU from INFO too (includes anyone else's use of it).
 */
export async function startBenchRedis (url: string | null): Promise<BenchRedis> {
  const prefix = `vigil-bench-${randomBytes(6).toString('hex')}:`
  if (url === null) {
    const port = await freePort()
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', '/tmp'], { stdio: 'ignore' })
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve))
    const deadline = Date.now() + 10_000
    while (!await listening(port)) {
      if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}) while starting`)
      const failed = await Promise.race([spawnError, sleep(50, null)])
      if (failed !== null) throw new Error(`redis-server could not be started: ${failed.message}`)
      if (Date.now() > deadline) {
        child.kill('SIGKILL')
        throw new Error(`redis-server did not listen on ${port} within 10 s`)
      }
    }
    const pid = child.pid!
    // Whatever happens to the bench, the server does not outlive it.
    const killOnExit = (): void => { child.kill('SIGKILL') }
    process.on('exit', killOnExit)
    const url = `redis://127.0.0.1:${port}`
    const info = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: () => null })
    info.on('error', () => {})
    return {
      url,
      prefix,
      pid,
      // INFO's getrusage figures have µs resolution where /proc/<pid>/stat counts 10 ms ticks:
      // a few ticks would be all of Redis's work in a short step. Same process, same CPU.
      meter: { name: 'Redis', read: async () => ({ [pid]: await redisInfoCpuUs(info) }) },
      close: async () => {
        info.disconnect()
        process.off('exit', killOnExit)
        child.kill('SIGTERM')
        await Promise.race([exited, sleep(3000)])
        child.kill('SIGKILL')
      }
    }
  }
  const redis = new Redis(url, { maxRetriesPerRequest: 1, retryStrategy: (n) => (n > 20 ? null : 200) })
  redis.on('error', () => {})
  await redis.ping()
  return {
    url,
    prefix,
    pid: null,
    meter: { name: 'Redis', read: async () => ({ server: await redisInfoCpuUs(redis) }) },
    close: async () => {
      try {
        await deleteKeysWithPrefix(redis, prefix)
      } finally {
        redis.disconnect()
      }
    }
  }
}

/**
 * CPU of the PostgreSQL backends connected to `database` (the bench's throwaway database, so
 * only Vigil's pools), from /proc/<pid>/stat: the server must be on this machine. The WAL writer,
 * checkpointer and autovacuum are shared with everyone and not counted; a backend that exits
 * during a step takes its CPU with it (the pools keep theirs open under load).
 */
export function postgresBackendsMeter (serverUrl: string, database: string): SharedCpuMeter & { close: () => Promise<void> } {
  let client: pg.Client | null = null
  return {
    name: 'PostgreSQL',
    read: async () => {
      if (client === null) {
        client = new pg.Client({ connectionString: serverUrl })
        await client.connect()
      }
      const { rows } = await client.query<{ pid: number }>(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", [database])
      const cpu: Record<string, number> = {}
      for (const { pid } of rows) {
        const u = processUsage(pid)
        if (u !== null) cpu[pid] = u.cpuUs
      }
      return cpu
    },
    close: async () => {
      await client?.end().catch(() => {})
      client = null
    }
  }
}
