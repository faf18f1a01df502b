import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import { createTestDatabase } from './postgres.ts'
import { spawnVigil, type VigilProcess } from './vigil-process.ts'

/** The machine's Redis (shared: every test uses its own REDIS_PREFIX and deletes its keys). */
export const sharedRedisUrl = process.env.VIGIL_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export const clusterAdminToken = 'cluster-test-admin-token-0123456789abcdef'

/** Deletes every key under `prefix` (SCAN, so a shared Redis is never blocked). */
export async function deleteKeysWithPrefix (redis: Redis, prefix: string): Promise<void> {
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    if (keys.length > 0) await redis.del(...keys)
  } while (cursor !== '0')
}

/** A prefix of its own, and a function deleting every key under it. */
export function redisPrefix (redisUrl = sharedRedisUrl): { prefix: string, deleteKeys: () => Promise<void> } {
  const prefix = `vigil-test-${randomBytes(6).toString('hex')}:`
  return {
    prefix,
    deleteKeys: async () => {
      const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, retryStrategy: () => null })
      redis.on('error', () => {})
      try {
        await deleteKeysWithPrefix(redis, prefix)
      } finally {
        redis.disconnect()
      }
    }
  }
}

export interface ClusterMember extends VigilProcess {
  readonly base: string
  /** An API call with the bootstrap admin token; the parsed body. */
  api<T = any> (method: string, route: string, body?: unknown): Promise<{ status: number, body: T }>
  /** The value of one metric line (first match), or undefined. */
  metric (name: string): Promise<number | undefined>
}

export interface StartClusterOptions {
  redisUrl?: string
  env?: Record<string, string>
  /** A database with nothing in it (not even the migrations): a real first start. */
  emptyDatabase?: boolean
  /** All `count` processes spawned at the same moment (a concurrent first start), not one after the other. */
  together?: boolean
  /** Per process; spawnVigil's default (60 s) unless given. */
  startTimeoutMs?: number
}

/**
 * Vigil processes of one cluster, each a real child process with its own data directory and
 * ports 0, on a Postgres database of their own and the given Redis under a prefix of their own.
 * Started one after the other (the first applies the migrations), or all at once (`together`).
 * `teardown` kills them, drops the database and deletes the prefix's keys; a start that fails
 * cleans up the same way and throws with every failed process's output.
 */
export async function startCluster (count: number, options: StartClusterOptions = {}) {
  const redisUrl = options.redisUrl ?? sharedRedisUrl
  const database = await createTestDatabase({ empty: options.emptyDatabase === true })
  const { prefix, deleteKeys } = redisPrefix(redisUrl)
  const dirs: string[] = []
  const members: ClusterMember[] = []
  // One PHI key for every member, as a cluster must have (config refuses REDIS_URL without one).
  const secretKey = randomBytes(32).toString('base64')
  const env = (): Record<string, string> => ({ DATABASE_URL: database.url, REDIS_URL: redisUrl, REDIS_PREFIX: prefix, VIGIL_ADMIN_TOKEN: clusterAdminToken, VIGIL_SECRET_KEY: secretKey, WORKER_THREADS: '1', LOG_LEVEL: 'info', ...options.env })
  async function start (dataDir?: string): Promise<ClusterMember> {
    const dir = dataDir ?? await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-cluster-'))
    if (dataDir === undefined) dirs.push(dir)
    const p = await spawnVigil(env(), dir, { startTimeoutMs: options.startTimeoutMs })
    const base = `http://127.0.0.1:${p.httpPort}`
    const member: ClusterMember = {
      ...p,
      base,
      async api (method, route, body) {
        const res = await fetch(base + route, {
          method,
          headers: { authorization: `Bearer ${clusterAdminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body)
        })
        const text = await res.text()
        return { status: res.status, body: text === '' ? undefined : JSON.parse(text) }
      },
      async metric (name) {
        const text = await fetch(`${base}/metrics`).then((r) => r.text())
        const line = text.split('\n').find((l) => l.startsWith(name) && (l[name.length] === ' ' || l[name.length] === '{'))
        return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
      }
    }
    members.push(member)
    return member
  }
  async function teardown (): Promise<void> {
    for (const m of members) {
      if (m.child.exitCode === null && m.child.signalCode === null) {
        m.child.kill('SIGKILL')
        await m.exited
      }
    }
    await database.drop()
    await deleteKeys().catch(() => {})
    for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true })
  }
  if (options.together === true) {
    const started = await Promise.allSettled(Array.from({ length: count }, async () => await start()))
    const failed = started.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed.length > 0) {
      await teardown()
      throw new Error(`${failed.length} of ${count} processes started together failed:\n${failed.map((r) => String(r.reason instanceof Error ? r.reason.message : r.reason)).join('\n---\n')}`)
    }
  } else {
    for (let i = 0; i < count; i++) await start()
  }
  return {
    members,
    prefix,
    databaseUrl: database.url,
    /** Another process of the same cluster (a fresh data directory unless given). */
    start,
    teardown
  }
}
