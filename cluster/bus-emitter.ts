import mqemitter, { type MQEmitter, type Message } from 'mqemitter'
import MQEmitterRedis from 'mqemitter-redis'
import type { Redis } from 'ioredis'

// The broker's emitter in a cluster (Aedes' `mq`). Aedes sends every publish through its
// emitter; on mqemitter-redis alone every reading would cross Redis to every process
// (moscajs/aedes#192, #703), though readings are consumed where they arrive (ingest runs in
// authorizePublish). So two emitters behind one face:
//   - a local mqemitter, where every subscription lives and every packet is delivered in
//     this process, Redis or not;
//   - mqemitter-redis, for the few topics with subscribers elsewhere (busTopic): alert
//     notifications and the $SYS topics of session takeover (MQTT-3.1.4-2 across the
//     cluster) and broker liveness. Those are published to Redis as well, and what other
//     processes publish is relayed into the local emitter.
// A Redis outage therefore costs only the cross-process copies (counted: onPublishFailed).

/** Topics with subscribers in other processes: everything else (device telemetry, status, other $SYS) stays local. */
export function busTopic (topic: string): boolean {
  if (topic.startsWith('alerts/') || topic.startsWith('users/')) return true
  // Aedes' own cluster topics: $SYS/{brokerId}/new/clients closes a session with the same
  // client id on other brokers (MQTT-3.1.4-2); heartbeat and birth tell brokers apart for Wills.
  if (topic.startsWith('$SYS/')) return /^\$SYS\/[^/]+\/(new\/clients|heartbeat|birth)$/.test(topic)
  return false
}

export interface BusEmitterOptions {
  /** This process (never seen back from Redis). */
  nodeId: string
  /** `${REDIS_PREFIX}mqtt/`: every MQTT topic crosses Redis as this prefix + the topic. */
  channelPrefix: string
  /** Publishes (enableOfflineQueue off: fails at once while Redis is down). */
  pub: Redis
  /** Subscribes (offline queue on: the subscription is made again on reconnect). */
  sub: Redis
  /** Aedes' mqemitter concurrency (100 by default). */
  concurrency?: number
  /** A copy to Redis that could not be sent; the local delivery happened. */
  onPublishFailed?: (err: Error) => void
}

interface Envelope extends Message {
  vigilOrigin: string
}

export function createBusEmitter (options: BusEmitterOptions): MQEmitter {
  // matchEmptyLevels as Aedes sets it for its own emitter (MQTT-4.7.1-3).
  const local = mqemitter({ concurrency: options.concurrency ?? 100, matchEmptyLevels: true })
  const remote: MQEmitter = MQEmitterRedis({ pubConn: options.pub, subConn: options.sub, matchEmptyLevels: true })
  const prefix = options.channelPrefix
  const noop = (): void => {}
  // mqemitter-redis re-emits connection errors on `state`: unheard, an EventEmitter throws
  // them. Connection state is watched on the connections themselves (cluster.ts).
  ;(remote as unknown as { state: { on (event: 'error', listener: () => void): void } }).state.on('error', noop)

  // One Redis pattern subscription for the whole bus: it carries a few packets per alert and
  // per device connect, so every process takes all of it and the local emitter picks the
  // subscribers (per-topic Redis subscriptions would double deliveries when patterns overlap).
  remote.on(`${prefix}#`, (message, done) => {
    const envelope = message as Envelope
    if (envelope.vigilOrigin === options.nodeId) return done()
    const { vigilOrigin: _origin, ...packet } = envelope
    local.emit({ ...packet, topic: packet.topic.slice(prefix.length) }, noop)
    done()
  })

  const emitter = {
    on (topic: string, listener: (message: Message, done: () => void) => void, done?: () => void) {
      local.on(topic, listener, done)
      return emitter
    },
    removeListener (topic: string, listener: (message: Message, done: () => void) => void, done?: () => void) {
      local.removeListener(topic, listener, done)
      return emitter
    },
    emit (message: Message, done?: (err?: Error) => void) {
      if (busTopic(message.topic)) {
        const envelope: Envelope = { ...message, topic: prefix + message.topic, vigilOrigin: options.nodeId }
        remote.emit(envelope, (err?: Error | null) => { if (err != null) options.onPublishFailed?.(err) })
      }
      local.emit(message, done)
      return emitter
    },
    close (done?: () => void) {
      // The Redis connections belong to the cluster handle, which closes them.
      local.close(() => done?.())
    },
    get current () { return local.current },
    get concurrent () { return local.concurrent },
    set concurrent (n: number) { local.concurrent = n }
  }
  return emitter as unknown as MQEmitter
}
