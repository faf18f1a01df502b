import { randomUUID } from 'node:crypto'
import os from 'node:os'
import { Redis, type RedisOptions } from 'ioredis'
import type { MQEmitter } from 'mqemitter'
import type { Logger } from 'pino'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import { createBusEmitter } from './bus-emitter.ts'

/** A message on the control channel: cache invalidations, alert events, pings. */
export interface ControlMessage {
  kind: string
  /** The sending process's nodeId. */
  from: string
  [field: string]: unknown
}

export interface ClusterOptions {
  redisUrl: string
  /** REDIS_PREFIX: of every key and channel. */
  prefix: string
  log: Logger
  registry: Registry
  /** Heartbeat, membership and bus latency probe (ms; default 5 s); a member missing three is gone. */
  heartbeatMs?: number
  /** How long start-up waits for Redis before starting degraded (ms; default 5 s). */
  connectWaitMs?: number
}

/**
 * One process's membership of a cluster (REDIS_URL set): three Redis connections (publish and
 * commands; the broker bus's subscriber; the control channel's subscriber), the broker's
 * emitter (bus-emitter.ts), the control channel `${prefix}cluster` where processes tell each
 * other what changed, membership (a sorted set of heartbeats with expiry) and the
 * `vigil_cluster_*` metrics. Redis going away is one log line and a gauge, not an error per
 * message, and nothing here throws at callers for it; `onRecovered` listeners run when it
 * returns, to drop what may have been missed meanwhile.
 */
export async function startCluster (options: ClusterOptions) {
  const log = options.log.child({ component: 'cluster' })
  const nodeId = `${os.hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`
  const { prefix } = options
  const controlChannel = `${prefix}cluster`
  const membersKey = `${prefix}members`
  const heartbeatMs = options.heartbeatMs ?? 5000
  const metrics = clusterMetrics(options.registry)

  const base: RedisOptions = {
    // Reconnect for ever, at most every 2 s: Redis coming back is the normal end of an outage.
    retryStrategy: (times) => Math.min(times * 100, 2000),
    connectTimeout: 2000,
    // Commands never wait for a reconnect: a caller is told at once and carries on degraded.
    maxRetriesPerRequest: 0
  }
  // Publishes and commands fail at once while Redis is down; subscribers queue their
  // SUBSCRIBE until it is back (ioredis re-subscribes by itself after a reconnect).
  const pub = new Redis(options.redisUrl, { ...base, enableOfflineQueue: false, connectionName: `vigil-pub-${nodeId}` })
  const busSub = new Redis(options.redisUrl, { ...base, connectionName: `vigil-bus-${nodeId}` })
  const controlSub = new Redis(options.redisUrl, { ...base, connectionName: `vigil-control-${nodeId}` })
  const connections = [pub, busSub, controlSub]
  const where = redisAddress(options.redisUrl)

  // Up while all three connections are ready. One line per change of state, never per error.
  let up: boolean | null = null
  // Connections become ready one by one at start: the state is judged once start-up has waited.
  let judging = false
  let lastError: string | null = null
  const recovered = new Set<() => void>()
  const stateChanged = (): void => {
    const now = connections.every((c) => c.status === 'ready')
    metrics.redisUp.set(now ? 1 : 0)
    if (!judging || now === up) return
    const before = up
    up = now
    if (!now) {
      log.error({ redis: where, error: lastError }, 'Redis unreachable: cluster features degraded (no cross-process alerts, invalidations or session takeover; assignments read from Postgres per reading); ingest goes on; reconnecting')
    } else if (before === false) {
      log.info({ redis: where }, 'Redis reachable again: cluster features restored')
      for (const listener of recovered) {
        try { listener() } catch (err) { log.error({ err }, 'cluster recovery listener failed') }
      }
    } else {
      log.info({ redis: where, nodeId }, 'joined the cluster')
    }
  }
  for (const c of connections) {
    c.on('ready', stateChanged)
    c.on('close', stateChanged)
    c.on('end', stateChanged)
    c.on('error', (err: Error) => { lastError = err.message })
  }

  const handlers = new Map<string, Set<(message: ControlMessage) => void>>()
  const probes = new Map<string, number>()
  controlSub.on('message', (channel: string, text: string) => {
    if (channel !== controlChannel) return
    let message: ControlMessage
    try {
      message = JSON.parse(text) as ControlMessage
    } catch {
      return
    }
    if (message.kind === 'ping') {
      const sentAt = probes.get(String(message.probe))
      if (message.from === nodeId && sentAt !== undefined) {
        probes.delete(String(message.probe))
        metrics.busLatency.observe((performance.now() - sentAt) / 1000)
      }
      return
    }
    if (message.from === nodeId) return
    metrics.received.inc({ kind: message.kind })
    for (const handler of handlers.get(message.kind) ?? []) {
      try { handler(message) } catch (err) { log.error({ err, kind: message.kind }, 'cluster message handler failed') }
    }
  })
  controlSub.subscribe(controlChannel).catch(() => {})

  async function send (kind: string, body: Record<string, unknown>): Promise<boolean> {
    try {
      await pub.publish(controlChannel, JSON.stringify({ ...body, kind, from: nodeId }))
      if (kind !== 'ping') metrics.sent.inc({ kind })
      return true
    } catch {
      metrics.publishFailures.inc()
      return false
    }
  }

  async function heartbeat (): Promise<void> {
    if (pub.status !== 'ready') return
    const now = Date.now()
    try {
      const results = await pub.multi()
        .zadd(membersKey, now + 3 * heartbeatMs, nodeId)
        .zremrangebyscore(membersKey, '-inf', now)
        .zcard(membersKey)
        .pexpire(membersKey, 6 * heartbeatMs)
        .exec()
      const count = results?.[2]?.[1]
      if (typeof count === 'number') metrics.members.set(count)
    } catch {
      // Counted as down by the connection state; the next beat tries again.
    }
    const probe = randomUUID()
    probes.clear()
    probes.set(probe, performance.now())
    void send('ping', { probe })
  }
  const beat = setInterval(() => { void heartbeat() }, heartbeatMs)
  beat.unref()

  // Start-up waits a little for Redis, then starts degraded rather than not at all: ingest needs no Redis.
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, options.connectWaitMs ?? 5000)
    const check = (): void => {
      if (connections.every((c) => c.status === 'ready')) {
        clearTimeout(timer)
        resolve()
      }
    }
    for (const c of connections) c.once('ready', check)
    check()
  })
  judging = true
  stateChanged()
  await heartbeat()

  let emitter: MQEmitter | null = null
  return {
    nodeId,
    prefix,
    /** Whether every connection to Redis is ready now. */
    up: (): boolean => up === true,
    /** The broker's emitter (Aedes' `mq`); one per process. */
    brokerEmitter (): MQEmitter {
      emitter ??= createBusEmitter({ nodeId, channelPrefix: `${prefix}mqtt/`, pub, sub: busSub, onPublishFailed: () => metrics.publishFailures.inc() })
      return emitter
    },
    /** Tells the other processes; false when Redis did not take it (down). */
    send,
    /** Messages of `kind` from other processes; returns the unsubscribe function. */
    on (kind: string, handler: (message: ControlMessage) => void): () => void {
      let set = handlers.get(kind)
      if (set === undefined) handlers.set(kind, set = new Set())
      set.add(handler)
      return () => { set.delete(handler) }
    },
    /** Runs after an outage, once Redis is back (messages sent meanwhile were lost). */
    onRecovered (listener: () => void): () => void {
      recovered.add(listener)
      return () => { recovered.delete(listener) }
    },
    /** For /healthz. */
    async ping (): Promise<void> {
      await pub.ping()
    },
    async close (): Promise<void> {
      clearInterval(beat)
      if (pub.status === 'ready') await pub.zrem(membersKey, nodeId).catch(() => {})
      for (const c of connections) c.disconnect()
    }
  }
}

export type Cluster = Awaited<ReturnType<typeof startCluster>>

/** host:port only: the URL may carry a password. */
function redisAddress (url: string): string {
  const parsed = new URL(url)
  return `${parsed.hostname}:${parsed.port === '' ? '6379' : parsed.port}`
}

function clusterMetrics (registry: Registry) {
  return {
    redisUp: new Gauge({ name: 'vigil_cluster_redis_up', help: '1 while this process is connected to Redis (REDIS_URL), else 0', registers: [registry] }),
    members: new Gauge({ name: 'vigil_cluster_members', help: 'Vigil processes whose heartbeat is live in Redis, this one included (as of the last heartbeat)', registers: [registry] }),
    busLatency: new Histogram({
      name: 'vigil_cluster_bus_latency_seconds',
      help: 'Round trip of a probe through the Redis control channel (publish to delivery, this process), every heartbeat',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry]
    }),
    sent: new Counter({ name: 'vigil_cluster_invalidations_sent_total', help: 'Messages sent to the other processes, by kind (credential, assignment, alert-events)', labelNames: ['kind'] as const, registers: [registry] }),
    received: new Counter({ name: 'vigil_cluster_invalidations_received_total', help: 'Messages received from other processes, by kind', labelNames: ['kind'] as const, registers: [registry] }),
    publishFailures: new Counter({ name: 'vigil_cluster_bus_publish_failures_total', help: 'Messages (control messages, broker bus packets) not sent to Redis because it was unreachable; the local delivery happened', registers: [registry] })
  }
}
