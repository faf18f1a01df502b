import net from 'node:net'
import { Aedes, type AuthenticateError, type Client } from 'aedes'
import type { Logger } from 'pino'
import type { Ingest, TopicKind } from '../ingest/ingest.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { DeviceRegistry } from '../store/device-registry.ts'
import { listen } from '../config/listen.ts'
import { limitFrames } from './frame-limit.ts'

export interface BrokerDeps {
  host: string
  port: number
  /** When the port is taken, listen on a free one instead (with a warning) rather than fail. */
  portFallback?: boolean
  maxPacketBytes: number
  devices: DeviceRegistry
  ingest: Ingest
  metrics: Metrics
  log: Logger
}

export interface BrokerHandle {
  /** The TCP port actually bound (differs from the configured one when that was 0). */
  readonly port: number
  readonly aedes: Aedes
  close (): Promise<void>
}

// Device ids are UUIDs (store/device-registry.ts). Checked before any lookup so a hostile
// client id never reaches SQL, a topic comparison or a map key.
const DEVICE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const PUBLISH_TOPIC = /^devices\/([0-9a-f-]{36})\/(telemetry|senml)$/

function authError (returnCode: 3 | 4 | 5, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError
}

/**
 * The embedded Aedes broker with device authentication, per-device topic ACLs, a frame size cap
 * ahead of Aedes, and the durable-before-PUBACK hook: Aedes 1.2 writes the QoS 1 PUBACK right
 * after authorizePublish calls back, so ingest runs inside authorizePublish.
 */
export async function createBroker (deps: BrokerDeps): Promise<BrokerHandle> {
  const log = deps.log.child({ component: 'broker' })
  const { metrics, devices, ingest } = deps
  // Credential each session authenticated with; WeakMap so closed clients leave nothing behind.
  const sessions = new WeakMap<Client, { deviceId: string, credentialId: string }>()

  function refuse (reason: string, fields: Record<string, unknown>): void {
    metrics.mqttRefused.inc({ reason })
    log.warn({ ...fields, reason }, 'mqtt refused')
  }

  const aedes = await Aedes.createBroker({
    connectTimeout: 10_000,
    maxClientsIdLength: 64,
    maxTopicLevels: 8,

    authenticate (client, username, password, done) {
      const clientId = typeof client.id === 'string' ? client.id : ''
      if (username === undefined || password === undefined) {
        refuse('anonymous', { remoteAddress: (client.conn as { remoteAddress?: string } | undefined)?.remoteAddress })
        return done(authError(5, 'not authorized'), false)
      }
      if (!DEVICE_ID.test(username)) {
        refuse('username_invalid', {})
        return done(authError(5, 'not authorized'), false)
      }
      if (clientId !== username) {
        refuse('client_id_mismatch', { deviceId: username })
        return done(authError(5, 'not authorized'), false)
      }
      devices.authenticate(username, password.toString('utf8')).then((credentialId) => {
        if (credentialId === null) {
          refuse('bad_credentials', { deviceId: username })
          return done(authError(5, 'not authorized'), false)
        }
        sessions.set(client, { deviceId: username, credentialId })
        done(null, true)
      }, (err: Error) => {
        log.error({ err, deviceId: username }, 'device authentication failed: database unavailable')
        metrics.mqttRefused.inc({ reason: 'auth_unavailable' })
        done(authError(3, 'server unavailable'), false)
      })
    },

    authorizePublish (client, packet, done) {
      // Aedes passes no client only for Wills left by a broker instance that died (clustering):
      // no session vouches for them, so they are refused like any unauthenticated publish.
      if (client === null) {
        refuse('publisher_unknown', {})
        return done(new Error('publisher unknown'))
      }
      const session = sessions.get(client)
      const match = PUBLISH_TOPIC.exec(packet.topic)
      if (session === undefined || match === null || match[1] !== session.deviceId) {
        refuse('topic_not_allowed', { deviceId: session?.deviceId })
        return done(new Error('topic not allowed'))
      }
      if (packet.retain) {
        refuse('retain_not_allowed', { deviceId: session.deviceId })
        return done(new Error('retained messages are not allowed'))
      }
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload)
      ingest.accept(session.deviceId, match[2] as TopicKind, packet.topic, payload).then(() => done(null), (err: Error) => {
        const reason = err.name === 'SpoolFullError' ? 'spool_full' : 'store_unavailable'
        metrics.mqttRefused.inc({ reason })
        log.error({ err, deviceId: session.deviceId, reason }, 'reading not made durable: closing connection without PUBACK')
        done(err)
      })
    },

    authorizeSubscribe (client, subscription, done) {
      const session = sessions.get(client)
      const prefix = `devices/${session?.deviceId ?? ''}/`
      if (session === undefined || !subscription.topic.startsWith(prefix)) {
        refuse('subscribe_not_allowed', { deviceId: session?.deviceId })
        return done(null, null) // SUBACK 0x80 for this filter; the session goes on
      }
      done(null, subscription)
    }
  })

  aedes.on('clientReady', (client) => {
    metrics.connectedDevices.inc()
    const session = sessions.get(client)
    if (session === undefined) return
    // A revocation that landed while scrypt ran would otherwise miss this session.
    devices.isCredentialActive(session.credentialId).then((active) => {
      if (!active) client.close()
    }, () => {})
  })
  aedes.on('clientDisconnect', () => metrics.connectedDevices.dec())
  aedes.on('clientError', (client, err) => log.debug({ deviceId: sessions.get(client)?.deviceId, err: err.message }, 'client error'))
  aedes.on('connectionError', (_client, err) => log.debug({ err: err.message }, 'connection error'))

  const onRevoked = (deviceId: string): void => {
    const client = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients[deviceId]
    if (client !== undefined) {
      log.info({ deviceId }, 'credential revoked: closing session')
      // Forget the session first: closing publishes the client's Will, which must not be
      // ingested on the strength of a revoked credential.
      sessions.delete(client)
      client.close()
    }
  }
  devices.events.on('credentials-revoked', onRevoked)

  const server = net.createServer((socket) => {
    aedes.handle(limitFrames(socket, deps.maxPacketBytes, (err) => {
      refuse('packet_too_large', { remoteAddress: socket.remoteAddress, err: err.message })
    }))
  })
  const port = await listen(server, deps.host, deps.port, deps.portFallback === true, 'MQTT_PORT', log)

  return {
    port,
    aedes,
    async close () {
      devices.events.off('credentials-revoked', onRevoked)
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
      await closed
    }
  }
}
