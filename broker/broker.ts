import type { Duplex } from 'node:stream'
import { Aedes, type AuthenticateError, type Client } from 'aedes'
import type { Logger } from 'pino'
import type { Authenticate, Principal } from '../access/auth.ts'
import type { Config } from '../config/config.ts'
import type { Ingest, TopicKind } from '../ingest/ingest.ts'
import type { Metrics } from '../observability/metrics.ts'
import { createLogThrottle } from '../observability/log-throttle.ts'
import type { DeviceRegistry } from '../devices/device-registry.ts'
import { createAddressGuard } from './address-guard.ts'
import { aedesPublisher, type PublishMqtt } from './alert-publisher.ts'
import { FrameTooLargeError, SlowSubscriberError, UnexpectedPacketTypeError, limitFrames } from './frame-limit.ts'
import { listenTcp, listenTls, listenWebSocket, type MqttConnection, type MqttListener, type TlsMaterial, type Transport } from './listeners.ts'
import type { ProxyProtocol } from './proxy-protocol.ts'
import { reasonOfAedesError, reasonOfTlsError, type RefusalReason } from './refusal-reasons.ts'

export interface BrokerLimits {
  /** Largest MQTT packet accepted; a larger one closes the connection before it is read. */
  maxPacketBytes: number
  /** Unsent bytes past which a connection that is not reading is dropped. */
  maxOutgoingBytes: number
  maxTopicLevels: number
  /** Largest keepalive a client may ask for (seconds); 0: no limit. */
  keepaliveLimitSeconds: number
  /** Time allowed from accepting a socket to the CONNACK: the CONNECT and its credential check (and for the TLS handshake). */
  connectTimeoutMs: number
  /** Inbound QoS 2 messages one client may hold awaiting PUBREL. */
  maxInflightQos2: number
  /** New connections per minute from one address; 0: no limit. */
  connectRatePerAddress: number
  /** Refused credentials within the window that lock an address out; 0: never. */
  authFailuresBeforeLockout: number
  authFailureWindowMs: number
  lockoutMs: number
}

/** The broker's limits as configuration sets them (MQTT_* variables, config/config.ts). */
export function brokerLimitsFrom (config: Config): BrokerLimits {
  return {
    maxPacketBytes: config.mqttMaxPacketBytes,
    maxOutgoingBytes: config.mqttMaxOutgoingBytes,
    maxTopicLevels: config.mqttMaxTopicLevels,
    keepaliveLimitSeconds: config.mqttKeepaliveLimitSeconds,
    connectTimeoutMs: config.mqttConnectTimeoutSeconds * 1000,
    maxInflightQos2: config.mqttMaxInflightQos2,
    connectRatePerAddress: config.mqttConnectRatePerAddress,
    authFailuresBeforeLockout: config.mqttAuthFailuresBeforeLockout,
    authFailureWindowMs: config.mqttAuthFailureWindowSeconds * 1000,
    lockoutMs: config.mqttLockoutSeconds * 1000
  }
}

export interface BrokerDeps {
  host: string
  port: number
  /** When the port is taken, listen on a free one instead (with a warning) rather than fail. */
  portFallback?: boolean
  /** MQTT over TLS; with `ca`, clients must present a certificate whose common name is their device id. */
  tls?: (TlsMaterial & { port: number }) | null
  /** MQTT over WebSocket on `/mqtt`. */
  wsPort?: number | null
  /** PROXY protocol on every listener (MQTT_PROXY_PROTOCOL): required from, and only accepted from, trusted addresses. */
  proxyProtocol?: ProxyProtocol | null
  limits: BrokerLimits
  devices: DeviceRegistry
  ingest: Ingest
  metrics: Metrics
  log: Logger
  /** Device presence and devices/{id}/status (alerting); without it the status topic is refused. */
  presence?: BrokerPresenceHooks | null
  /** People subscribing to alerts/{patientId} and users/{their user id}/alerts: CONNECT with username `bearer`, password an API bearer token. */
  alertSubscribers?: AlertSubscriberAuth | null
  /** True while the data directory is below its free-space reserve: publishes are refused (disk_low) without PUBACK. */
  diskLow?: () => boolean
  /** Alert notifications (alerts/lifecycle/mqtt-relay.ts): the broker attaches its publish once listening, detaches at close. */
  alertRelay?: { attach (publish: PublishMqtt): () => void } | null
}

export interface BrokerPresenceHooks {
  connected (deviceId: string): unknown
  disconnected (deviceId: string): unknown
  /** Resolves once the status (or its rejection) is durable; rejects to drop the connection without PUBACK. */
  status (deviceId: string, topic: string, payload: Buffer): Promise<unknown>
}

export interface AlertSubscriberAuth {
  authenticate: Authenticate
  canSee (principal: Principal, patientId: string): Promise<boolean>
  /** The patients the principal may see now (null: every patient), for their own users/{id}/alerts topic. */
  visiblePatients (principal: Principal): Promise<ReadonlySet<string> | null>
  /**
   * How often a person's session is checked again (ms, default 10 s): a logged-out, expired or
   * revoked token, or a patient no longer visible (care team or break-glass ended), closes the
   * session. Each check also renews the session's cached access decisions, which every delivery
   * reads (authorizeForward); a decision not renewed within three intervals (the database was
   * unreachable) stops deliveries for that patient until it is.
   */
  recheckIntervalMs?: number
}

/** The MQTT username a person connects with; the password is their API bearer token. */
export const BEARER_USERNAME = 'bearer'

export interface BrokerHandle {
  /** The TCP port actually bound (differs from the configured one when that was 0). */
  readonly port: number
  /** The TLS port bound, or null without TLS. */
  readonly tlsPort: number | null
  /** The WebSocket port bound, or null without WebSocket. */
  readonly wsPort: number | null
  readonly aedes: Aedes
  /** Checks every person's session again now (the interval does it on its own); resolves with how many were closed. */
  recheckPeople (): Promise<number>
  close (): Promise<void>
}

// Device ids are UUIDs (devices/device-registry.ts). Checked before any lookup so a hostile
// client id never reaches SQL, a topic comparison or a map key.
const DEVICE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
// What any client id must look like before anything else reads it: no wildcards (+ #), no
// topic separator (/), no control characters, nothing a topic or log could misread.
const CLIENT_ID = /^[A-Za-z0-9_-]{1,64}$/
const PUBLISH_TOPIC = /^devices\/([0-9a-f-]{36})\/(telemetry|senml|status)$/
const ALERT_TOPIC = /^alerts\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/
const USER_ALERT_TOPIC = /^users\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/alerts$/

/** The type and patient of an alert notification (alerts/lifecycle/alert-store.ts notificationPayload); null when it names none. */
function eventOf (payload: Buffer | string): { type: string, patientId: string } | null {
  try {
    const parsed = JSON.parse(Buffer.isBuffer(payload) ? payload.toString('utf8') : payload) as { type?: unknown, alert?: { patientId?: unknown } }
    const patientId = parsed.alert?.patientId
    return typeof patientId === 'string' && typeof parsed.type === 'string' ? { type: parsed.type, patientId } : null
  } catch {
    return null
  }
}

/** What a log line needs of a storage error: no stack (the cause is the same for every publish). */
function errorSummary (err: Error): { error: string, code?: string } {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? { error: err.message, code } : { error: err.message }
}

/** Whose a person's MQTT client ids are: the user, or the API token when no user stands behind it. */
function ownerOf (principal: Principal): string {
  return principal.userId ?? principal.tokenId
}

/** A refusal already counted and logged: Aedes reports it again as a client error. */
class Refusal extends Error {
  constructor (readonly reason: RefusalReason, message: string, readonly returnCode?: 2 | 3 | 4 | 5) {
    super(message)
    this.name = 'Refusal'
  }
}

function connack (refusal: Refusal): AuthenticateError {
  return refusal as unknown as AuthenticateError
}

// Credentials refused for these reasons count towards an address's lockout: each is a guess at
// a device id or secret. Anonymous and malformed CONNECTs cost no credential check; the
// connection rate limit bounds them.
const CREDENTIAL_FAILURES: ReadonlySet<RefusalReason> = new Set(['username_invalid', 'client_id_mismatch', 'certificate_mismatch', 'bad_credentials'])

// Refusals that come in floods: only the first of a run is logged at warn, the rest at debug.
const FLOOD_REASONS: ReadonlySet<RefusalReason> = new Set(['connect_rate_limited', 'locked_out'])

interface ConnectionInfo {
  transport: Transport
  /** The address limits are kept by (see addressKey). */
  remoteAddress: string | undefined
  certificateCommonName?: string | string[]
  /** When the connection was handed to Aedes (ms): the connect timeout runs from here to the CONNACK. */
  acceptedAt: number
}

/**
 * The embedded Aedes broker with device authentication, per-device topic ACLs, limits on what one
 * connection or address may cost (frame size, unsent bytes, connect rate, credential guessing,
 * in-flight QoS 2), and the durable-before-PUBACK hook: Aedes 1.2 writes the QoS 1 PUBACK right
 * after authorizePublish calls back, so ingest runs inside authorizePublish. Serves MQTT over
 * TCP, and over TLS and WebSocket when configured; every transport goes through the same limits.
 */
export async function createBroker (deps: BrokerDeps): Promise<BrokerHandle> {
  const log = deps.log.child({ component: 'broker' })
  const { metrics, devices, ingest, limits } = deps
  // Credential each session authenticated with; WeakMap so closed clients leave nothing behind.
  const sessions = new WeakMap<Client, { deviceId: string, credentialId: string }>()
  // People's sessions (alert subscribers): they may subscribe to alerts/{patientId} and their own users/{userId}/alerts, never publish.
  const people = new WeakMap<Client, Principal>()
  // Live person sessions: the bearer secret they connected with (memory only, never logged)
  // and, per patient, when this connection's principal was last found to reach them (ms). It is
  // the synchronous cache authorizeForward reads: filled by authorizeSubscribe (also for the
  // subscriptions Aedes restores on a resumed session), renewed by recheckPeople. A patient not
  // in it (never checked for this principal, or the check refused) gets no delivery. `own`: once
  // the person subscribes to users/{id}/alerts, the patients they may see (null: all) and when
  // that was found; each delivery on that topic names its patient (alert.patientId in the
  // payload) and passes only for one of them, within the same max age.
  const livePeople = new Map<Client, { bearer: string, patients: Map<string, number>, own: { visible: ReadonlySet<string> | null, checkedAt: number } | null }>()
  const recheckIntervalMs = deps.alertSubscribers?.recheckIntervalMs ?? 10_000
  const verdictMaxAgeMs = 3 * recheckIntervalMs
  // Device sessions whose connect was reported to presence (sessions may be forgotten first on revocation).
  const presentDevices = new WeakMap<Client, string>()
  // What the transport established, keyed by the stream Aedes reads (client.conn).
  const connections = new WeakMap<Duplex, ConnectionInfo>()
  // The client id and clean flag as sent: Aedes swaps an empty client id for a generated one
  // before authenticate runs.
  const connectPackets = new WeakMap<Client, { clientId: string, clean: boolean }>()
  // Clients whose refusal is already counted: Aedes may report more errors as the socket dies.
  const refusedClients = new WeakSet<Client>()
  // Errors handed to Aedes after being counted (ingest failures): Aedes reports them back.
  const countedErrors = new WeakSet<Error>()
  const guard = createAddressGuard({
    connectsPerMinute: limits.connectRatePerAddress,
    failuresBeforeLockout: limits.authFailuresBeforeLockout,
    failureWindowMs: limits.authFailureWindowMs,
    lockoutMs: limits.lockoutMs
  })
  // A full disk or a store outage refuses every publish for one cause: one line per reason per
  // interval with a count, not a stack trace per publish written onto that same disk.
  const storeRefusals = createLogThrottle(log)

  function refuse (reason: RefusalReason, fields: Record<string, unknown>, level: 'error' | 'warn' | 'debug' = 'warn'): void {
    metrics.mqttRefused.inc({ reason })
    log[level]({ ...fields, reason }, 'mqtt refused')
  }

  function infoOf (client: Client): ConnectionInfo | undefined {
    return connections.get(client.conn as Duplex)
  }

  const aedes = await Aedes.createBroker({
    connectTimeout: limits.connectTimeoutMs,
    keepaliveLimit: limits.keepaliveLimitSeconds,
    maxInflightInbound: limits.maxInflightQos2,
    maxClientsIdLength: 64,
    maxTopicLevels: limits.maxTopicLevels,
    // limitFrames never reports backpressure to Aedes (a slow reader is dropped there instead),
    // so this is only a backstop for a transport that bypasses it.
    drainTimeout: 30_000,

    preConnect (client, packet, done) {
      const clientId = typeof packet.clientId === 'string' ? packet.clientId : ''
      connectPackets.set(client, { clientId, clean: packet.clean !== false })
      // Vigil speaks MQTT 3.1.1 only, but Aedes also accepts 3.1 (MQIsdp, level 3). Below 3 is
      // Aedes' own refusal path for an unacceptable level: CONNACK 1 (MQTT-3.1.2-2), then close,
      // counted as protocol_version like any other unsupported level.
      if (packet.protocolVersion === 3) packet.protocolVersion = 2 as typeof packet.protocolVersion
      // MQTT-1.5.3-2: a UTF-8 string holding U+0000 makes the receiver close the connection.
      const nulIn = clientId.includes('\u0000')
        ? 'client_id_invalid'
        : typeof packet.username === 'string' && packet.username.includes('\u0000') ? 'username_invalid' : null
      if (nulIn !== null) {
        const info = infoOf(client)
        refuse(nulIn, { remoteAddress: info?.remoteAddress, transport: info?.transport, detail: 'U+0000 in a string (MQTT-1.5.3-2)' })
        refusedClients.add(client)
        return done(new Refusal(nulIn, 'U+0000 in a UTF-8 string'), false)
      }
      done(null, true)
    },

    authenticate (client, username, password, doneOnce) {
      const info = infoOf(client)
      const remoteAddress = info?.remoteAddress
      const sent = connectPackets.get(client) ?? { clientId: client.id, clean: client.clean }
      // Aedes stops its connect timer when the CONNECT arrives; the credential check (a database
      // query, scrypt, perhaps queued) runs on the same clock: past MQTT_CONNECT_TIMEOUT_SECONDS
      // from the socket's acceptance the client gets CONNACK 3 (retry later) and a late answer is ignored.
      let settled = false
      const timer = setTimeout(() => {
        fail('connect_timeout', 3, { deviceId: DEVICE_ID.test(username ?? '') ? username : undefined, detail: 'credential check did not finish in time' })
      }, Math.max(0, (info?.acceptedAt ?? Date.now()) + limits.connectTimeoutMs - Date.now()))
      const done: typeof doneOnce = (err, ok) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        doneOnce(err, ok)
      }
      const fail = (reason: RefusalReason, returnCode: 2 | 3 | 5, fields: Record<string, unknown> = {}): void => {
        if (settled) return
        const level = reason === 'auth_unavailable' ? 'error' : FLOOD_REASONS.has(reason) ? 'debug' : 'warn'
        refuse(reason, { remoteAddress, transport: info?.transport, ...fields }, level)
        refusedClients.add(client)
        if (CREDENTIAL_FAILURES.has(reason) && guard.recordAuthFailure(remoteAddress ?? '')) {
          log.warn({ remoteAddress, lockoutSeconds: limits.lockoutMs / 1000 }, 'address locked out after repeated refused credentials')
        }
        done(connack(new Refusal(reason, returnCode === 2 ? 'identifier rejected' : returnCode === 3 ? 'server unavailable' : 'not authorized', returnCode)), false)
      }

      // The client id first: nothing else may read it before it is known to be harmless.
      // MQTT-3.1.3-8: a zero-byte client id with CleanSession 0 gets CONNACK 0x02. With
      // CleanSession 1 a server may assign one (MQTT-3.1.3-6), but a Vigil client id is the
      // device id, so it is rejected too (MQTT-3.1.3-9: CONNACK 0x02, then close).
      if (sent.clientId === '') return fail('client_id_empty', 2, { clean: sent.clean })
      if (!CLIENT_ID.test(sent.clientId)) return fail('client_id_invalid', 2)
      // Locked out: refused without looking at the credential (no database query, no scrypt).
      if (guard.lockedOut(remoteAddress ?? '')) return fail('locked_out', 5)
      if (username === undefined || password === undefined) return fail('anonymous', 5)
      if (username === BEARER_USERNAME && deps.alertSubscribers != null) {
        // A person's client id must not look like a device id: taking it over would
        // disconnect that device (MQTT-3.1.4-2).
        if (DEVICE_ID.test(sent.clientId)) return fail('client_id_invalid', 2)
        const subscribers = deps.alertSubscribers
        subscribers.authenticate(password.toString('utf8')).then((principal) => {
          if (settled) return
          if (principal === null || !principal.permissions.has('alerts:read')) return fail('bad_credentials', 5, { person: true })
          // A person's client id is theirs: `{userId}-{anything}` (an API token: `{tokenId}-…`).
          // Only its owner can then take over a live session with it (MQTT-3.1.4-2 closes the
          // older one) or resume a persistent one with its queued alerts.
          const owner = ownerOf(principal)
          if (!sent.clientId.startsWith(`${owner}-`) || sent.clientId.length === owner.length + 1) {
            return fail('client_id_not_owned', 2, { person: true, userId: principal.userId })
          }
          people.set(client, principal)
          livePeople.set(client, { bearer: password.toString('utf8'), patients: new Map(), own: null })
          done(null, true)
        }, (err: Error) => fail('auth_unavailable', 3, { person: true, err }))
        return
      }
      if (!DEVICE_ID.test(username)) return fail('username_invalid', 5)
      if (sent.clientId !== username) return fail('client_id_mismatch', 5, { deviceId: username })
      // Mutual TLS: the certificate names the device, and must name this one.
      if (info?.certificateCommonName !== undefined && info.certificateCommonName !== username) {
        return fail('certificate_mismatch', 5, { deviceId: username })
      }
      devices.authenticate(username, password.toString('utf8')).then((credentialId) => {
        if (settled) return
        if (credentialId === null) return fail('bad_credentials', 5, { deviceId: username })
        sessions.set(client, { deviceId: username, credentialId })
        done(null, true)
      }, (err: Error) => {
        // CONNACK 3: the device should retry later; its credential was not judged.
        fail('auth_unavailable', 3, { deviceId: username, err })
      })
    },

    authorizePublish (client, packet, done) {
      const refused = (reason: RefusalReason, message: string, deviceId?: string): void => {
        refuse(reason, { deviceId })
        done(new Refusal(reason, message))
      }
      // Aedes passes no client only for Wills left by a broker instance that died (clustering):
      // no session vouches for them, so they are refused like any unauthenticated publish.
      if (client === null) return refused('publisher_unknown', 'publisher unknown')
      const session = sessions.get(client)
      // Also keeps $SYS/ read-only: no device topic starts with it.
      const match = PUBLISH_TOPIC.exec(packet.topic)
      if (session === undefined || match === null || match[1] !== session.deviceId) {
        refusedClients.add(client)
        return refused('topic_not_allowed', 'topic not allowed', session?.deviceId)
      }
      if (packet.retain) {
        refusedClients.add(client)
        return refused('retain_not_allowed', 'retained messages are not allowed', session.deviceId)
      }
      // Before anything is written: PGlite hangs rather than fails on a full disk, so the
      // device keeps the message and resends once there is room again.
      if (deps.diskLow?.() === true) {
        refusedClients.add(client)
        return refused('disk_low', 'server storage is low, retry later', session.deviceId)
      }
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload)
      if (match[2] === 'status') {
        if (deps.presence == null) {
          refusedClients.add(client)
          return refused('topic_not_allowed', 'topic not allowed', session.deviceId)
        }
        deps.presence.status(session.deviceId, packet.topic, payload).then(() => done(null), (err: Error) => {
          metrics.mqttRefused.inc({ reason: 'store_unavailable' })
          storeRefusals.log('error', 'status:store_unavailable', { deviceId: session.deviceId, reason: 'store_unavailable', ...errorSummary(err) },
            'status not made durable: closing connection without PUBACK')
          countedErrors.add(err)
          refusedClients.add(client)
          done(err)
        })
        return
      }
      ingest.accept(session.deviceId, match[2] as TopicKind, packet.topic, payload).then(() => done(null), (err: Error) => {
        const reason = err.name === 'SpoolFullError' ? 'spool_full' : 'store_unavailable'
        metrics.mqttRefused.inc({ reason })
        storeRefusals.log('error', reason, { deviceId: session.deviceId, reason, ...errorSummary(err) },
          'reading not made durable: closing connection without PUBACK')
        countedErrors.add(err)
        refusedClients.add(client)
        done(err)
      })
    },

    authorizeSubscribe (client, subscription, done) {
      const person = people.get(client)
      if (person !== undefined) {
        const alertTopic = ALERT_TOPIC.exec(subscription.topic)
        const refuseSubscription = (): void => {
          refuse('subscribe_not_allowed', { person: true })
          done(null, null)
        }
        // A person's own alerts (those an escalation tier reached them with): users/{their id}/alerts.
        const ownTopic = USER_ALERT_TOPIC.exec(subscription.topic)
        if (ownTopic !== null && deps.alertSubscribers != null) {
          if (ownTopic[1] !== person.userId) return refuseSubscription()
          // Its deliveries are for patients the person may see now: find them before granting.
          deps.alertSubscribers.visiblePatients(person).then((visible) => {
            const live = livePeople.get(client)
            if (live !== undefined) live.own = { visible, checkedAt: Date.now() }
            done(null, subscription)
          }, () => refuseSubscription())
          return
        }
        if (alertTopic === null || deps.alertSubscribers == null) return refuseSubscription()
        deps.alertSubscribers.canSee(person, alertTopic[1]!).then((allowed) => {
          if (!allowed) return refuseSubscription()
          livePeople.get(client)?.patients.set(alertTopic[1]!, Date.now())
          done(null, subscription)
        }, () => refuseSubscription())
        return
      }
      const session = sessions.get(client)
      const prefix = `devices/${session?.deviceId ?? ''}/`
      // Also keeps $SYS/ out of reach: a device subscribes under its own prefix only.
      if (session === undefined || !subscription.topic.startsWith(prefix)) {
        refuse('subscribe_not_allowed', { deviceId: session?.deviceId })
        return done(null, null) // SUBACK 0x80 for this filter; the session goes on
      }
      done(null, subscription)
    },

    // Every packet to a subscriber passes here, live ones and those queued for a persistent
    // session while it was offline (Aedes' emptyQueue checks nothing else: a refused restored
    // subscription does not stop them). Synchronous, so it reads the cache above.
    authorizeForward (client, packet) {
      const person = people.get(client)
      if (person !== undefined) {
        const live = livePeople.get(client)
        const fresh = (checkedAt: number | undefined): boolean => checkedAt !== undefined && Date.now() - checkedAt <= verdictMaxAgeMs
        const ownTopic = USER_ALERT_TOPIC.exec(packet.topic)
        const alertTopic = ALERT_TOPIC.exec(packet.topic)
        // Comments are clinical notes: only for principals who may read them (as GET /v1/alerts/{id}/events).
        const needsPayload = ownTopic !== null || !person.permissions.has('clinical-notes:read')
        const event = needsPayload ? eventOf(packet.payload) : null
        const noteAllowed = event?.type !== 'commented' || person.permissions.has('clinical-notes:read')
        let allowed = false
        if (ownTopic !== null) {
          // A person's own alerts (the topic names the connected person: client ids are bound to
          // their owner), each for a patient they were found to see within the max age.
          const own = live?.own
          allowed = ownTopic[1] === person.userId && own != null && fresh(own.checkedAt) && event !== null &&
            (own.visible === null || own.visible.has(event.patientId))
        } else if (alertTopic !== null) {
          allowed = fresh(live?.patients.get(alertTopic[1]!))
        }
        if (allowed && noteAllowed) return packet
        refuse('forward_not_allowed', { person: true, userId: person.userId }, 'debug')
        return null
      }
      const session = sessions.get(client)
      if (session !== undefined && packet.topic.startsWith(`devices/${session.deviceId}/`)) return packet
      return null
    }
  })

  aedes.on('clientReady', (client) => {
    metrics.connectedDevices.inc()
    const session = sessions.get(client)
    if (session === undefined) return
    if (deps.presence != null) {
      presentDevices.set(client, session.deviceId)
      deps.presence.connected(session.deviceId)
    }
    // A revocation that landed while scrypt ran would otherwise miss this session.
    devices.isCredentialActive(session.credentialId).then((active) => {
      if (!active) client.close()
    }, () => {})
  })
  aedes.on('clientDisconnect', (client) => {
    metrics.connectedDevices.dec()
    livePeople.delete(client)
    const deviceId = presentDevices.get(client)
    if (deviceId === undefined || deps.presence == null) return
    // A takeover (same client id reconnecting) closes the old session after the new one is
    // live: that is not a disconnect of the device.
    const current = (aedes as unknown as { clients: Record<string, Client | undefined> }).clients[deviceId]
    if (current !== undefined && current !== client) return
    deps.presence.disconnected(deviceId)
  })
  // Limits Aedes enforces itself (connect timeout, keepalive limit, topic depth, QoS 2 window,
  // malformed packets) surface only as errors: count and log each connection's first.
  const onAedesError = (client: Client, err: Error): void => {
    const deviceId = sessions.get(client)?.deviceId
    if (err instanceof Refusal || countedErrors.has(err) || refusedClients.has(client)) {
      log.debug({ deviceId, err: err.message }, 'client error after refusal')
      return
    }
    const reason = reasonOfAedesError(err)
    if (reason === null) {
      log.debug({ deviceId, err: err.message }, 'client error')
      return
    }
    refusedClients.add(client)
    const info = infoOf(client)
    refuse(reason, { deviceId, remoteAddress: info?.remoteAddress, transport: info?.transport, detail: err.message })
  }
  aedes.on('clientError', onAedesError)
  aedes.on('connectionError', onAedesError)

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

  const hooks = {
    admit (socket: { remoteAddress?: string }, transport: Transport): boolean {
      const admission = guard.admitConnection(socket.remoteAddress ?? '')
      if (admission === 'admitted') return true
      refuse('connect_rate_limited', { remoteAddress: socket.remoteAddress, transport }, admission === 'refused_first' ? 'warn' : 'debug')
      return false
    },
    connection ({ transport, stream, remoteAddress, certificateCommonName, request }: MqttConnection): void {
      const limited = limitFrames(stream, limits, remoteAddress, (err) => {
        const client = (limited as Duplex & { client?: Client }).client
        if (client !== undefined) refusedClients.add(client)
        const reason: RefusalReason = err instanceof FrameTooLargeError
          ? 'packet_too_large'
          : err instanceof SlowSubscriberError
            ? 'slow_subscriber'
            : err instanceof UnexpectedPacketTypeError ? 'protocol_violation' : 'malformed_packet'
        refuse(reason, { deviceId: client === undefined ? undefined : sessions.get(client)?.deviceId, remoteAddress, transport, detail: err.message })
      })
      connections.set(limited, { transport, remoteAddress, certificateCommonName, acceptedAt: Date.now() })
      aedes.handle(limited, request)
    },
    tlsError (err: Error, remoteAddress: string | undefined): void {
      const reason = reasonOfTlsError(err)
      if (reason === null) {
        log.debug({ remoteAddress, err: err.message }, 'TLS connection dropped during handshake')
        return
      }
      refuse(reason, { remoteAddress, transport: 'tls', detail: err.message })
    },
    proxyRefused (reason: RefusalReason, remoteAddress: string | undefined, transport: Transport, detail: string): void {
      refuse(reason, { remoteAddress, transport, detail })
    }
  }

  const listeners: MqttListener[] = []
  const closeListeners = async (): Promise<void> => {
    await Promise.all(listeners.splice(0).map((l) => l.close()))
  }
  const common = { host: deps.host, connectTimeoutMs: limits.connectTimeoutMs, hooks, log, proxyProtocol: deps.proxyProtocol ?? null }
  try {
    listeners.push(await listenTcp({ ...common, port: deps.port, portFallback: deps.portFallback, variable: 'MQTT_PORT' }))
    if (deps.tls != null) {
      listeners.push(await listenTls({ ...common, port: deps.tls.port, variable: 'MQTT_TLS_PORT', tls: deps.tls }))
    }
    if (deps.wsPort != null) {
      listeners.push(await listenWebSocket({ ...common, port: deps.wsPort, variable: 'MQTT_WS_PORT', maxPayloadBytes: limits.maxPacketBytes }))
    }
  } catch (err) {
    await closeListeners()
    await new Promise<void>((resolve) => aedes.close(() => resolve()))
    guard.close()
    storeRefusals.close()
    throw err
  }
  const portOf = (transport: Transport): number | null => listeners.find((l) => l.transport === transport)?.port ?? null

  /** A person keeps receiving alerts only while their token is valid and each subscribed patient is still theirs. */
  async function recheckPeople (): Promise<number> {
    const subscribers = deps.alertSubscribers
    if (subscribers == null) return 0
    let closed = 0
    for (const [client, live] of [...livePeople]) {
      let keep: boolean
      try {
        const principal = await subscribers.authenticate(live.bearer)
        keep = principal !== null && principal.permissions.has('alerts:read')
        const checked: string[] = []
        const checkedAt = Date.now()
        for (const patientId of live.patients.keys()) {
          if (!keep || principal === null) break
          keep = await subscribers.canSee(principal, patientId)
          checked.push(patientId)
        }
        // The own-alerts topic stays the person's: patients no longer visible are dropped from
        // it (their deliveries refused), the session goes on.
        const visible = keep && principal !== null && live.own !== null ? await subscribers.visiblePatients(principal) : undefined
        if (keep && principal !== null) {
          people.set(client, principal)
          for (const patientId of checked) live.patients.set(patientId, checkedAt)
          if (visible !== undefined) live.own = { visible, checkedAt }
        }
      } catch {
        // The database is unreachable: the decision cannot be made now; the next check makes it.
        continue
      }
      if (!keep) {
        livePeople.delete(client)
        refuse('access_revoked', { person: true })
        client.close()
        closed++
      }
    }
    return closed
  }
  const recheckTimer = deps.alertSubscribers == null
    ? null
    : setInterval(() => { recheckPeople().catch(() => {}) }, recheckIntervalMs)
  recheckTimer?.unref()
  const detachAlerts = deps.alertRelay?.attach(aedesPublisher(aedes))

  return {
    recheckPeople,
    port: portOf('tcp')!,
    tlsPort: portOf('tls'),
    wsPort: portOf('ws'),
    aedes,
    async close () {
      detachAlerts?.()
      if (recheckTimer !== null) clearInterval(recheckTimer)
      devices.events.off('credentials-revoked', onRevoked)
      // Stop accepting and drop connections that never became clients; Aedes closes the rest.
      const listenersClosed = closeListeners()
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
      await listenersClosed
      guard.close()
      storeRefusals.close()
    }
  }
}
