import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { redisPrefix, sharedRedisUrl } from './cluster.ts'
import { createTestDatabase } from './postgres.ts'
import { spawnVigil, type VigilProcess } from './vigil-process.ts'
import { adminToken } from './vigil.ts'

/**
 * Several real Vigil processes (`node main.ts`) on one Postgres database, each with its own
 * data directory, as docs/operations.md#running-several-processes describes: what Postgres gives
 * a cluster (leadership, jobs, alert state) is under test. They run with REDIS_URL (the machine's
 * Redis, a prefix of their own), as several processes must: one without it takes itself for the
 * only one on its database (alert rule state kept in memory between saves).
 */
export interface PostgresCluster {
  readonly databaseUrl: string
  readonly members: ClusterMember[]
  /** Starts one more process on the same database. */
  add (): Promise<ClusterMember>
  close (): Promise<void>
}

export interface ClusterMember extends VigilProcess {
  readonly name: string
  readonly base: string
  api<T = any> (method: string, route: string, body?: unknown): Promise<{ status: number, body: T }>
  /** The sample values of one metric family, keyed by its label text (`task="escalation"`). */
  metric (name: string): Promise<Map<string, number>>
  alive (): boolean
}

export async function startPostgresCluster (size: number, env: Record<string, string> = {}): Promise<PostgresCluster> {
  const db = await createTestDatabase()
  const dirs: string[] = []
  const members: ClusterMember[] = []
  // One key set for all: a record written by one process is read by another.
  const secretKey = randomBytes(32).toString('base64')
  const redis = redisPrefix()
  const add = async (): Promise<ClusterMember> => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-cluster-'))
    dirs.push(dir)
    const name = `vigil-${dirs.length}`
    const proc = await spawnVigil({
      DATABASE_URL: db.url, REDIS_URL: sharedRedisUrl, REDIS_PREFIX: redis.prefix, VIGIL_ADMIN_TOKEN: adminToken, VIGIL_SECRET_KEY: secretKey, WORKER_THREADS: '1', ...env
    }, dir, { startTimeoutMs: 120_000 })
    const base = `http://127.0.0.1:${proc.httpPort}`
    const member: ClusterMember = {
      ...proc,
      name,
      base,
      alive: () => proc.child.exitCode === null && proc.child.signalCode === null,
      async api<T> (method: string, route: string, body?: unknown) {
        const res = await fetch(base + route, {
          method,
          headers: { authorization: `Bearer ${adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body)
        })
        const text = await res.text()
        return { status: res.status, body: (text === '' ? null : JSON.parse(text)) as T }
      },
      async metric (metricName: string) {
        const text = await (await fetch(`${base}/metrics`)).text()
        const samples = new Map<string, number>()
        for (const line of text.split('\n')) {
          const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line)
          if (m !== null && m[1] === metricName) samples.set(m[2] ?? '', Number(m[3]))
        }
        return samples
      }
    }
    members.push(member)
    return member
  }
  try {
    // One at a time: the first applies the migrations, the others find them applied.
    await add()
    await Promise.all(Array.from({ length: size - 1 }, () => add()))
  } catch (err) {
    for (const m of members) m.child.kill('SIGKILL')
    await db.drop().catch(() => {})
    await redis.deleteKeys().catch(() => {})
    throw err
  }
  return {
    databaseUrl: db.url,
    members,
    add,
    async close () {
      for (const m of members) if (m.alive()) m.child.kill('SIGTERM')
      await Promise.all(members.map(async (m) => {
        const timer = setTimeout(() => m.child.kill('SIGKILL'), 15_000)
        await m.exited
        clearTimeout(timer)
      }))
      await db.drop()
      await redis.deleteKeys().catch(() => {})
      for (const d of dirs) await fs.rm(d, { recursive: true, force: true })
    }
  }
}
