import type { MQEmitter } from 'mqemitter'
import type { Logger } from 'pino'
import type { Authenticate, Principal } from '../access/auth.ts'
import type { Config } from '../config/config.ts'
import type { DeviceRegistry } from '../devices/device-registry.ts'
import type { Ingest } from '../ingest/ingest.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { TlsMaterial } from './listeners.ts'
import type { PublishMqtt } from './alert-publisher.ts'
import type { ProxyProtocol } from './proxy-protocol.ts'

/**
 * The broker's own defaults, in one place (as aedes keeps its `defaultOptions`). The limits an
 * operator sets (MQTT_* variables) come from configuration instead: brokerLimitsFrom.
 */
export const defaultOptions = {
  /** Longest client id (Aedes' maxClientsIdLength and the client id rule, connect.ts). */
  maxClientIdLength: 64,
  /** limitFrames never reports backpressure to Aedes (a slow reader is dropped there instead), so this is only a backstop for a transport that bypasses it. */
  drainTimeoutMs: 30_000,
  /** How often a person's alert session is checked again (AlertSubscriberAuth.recheckIntervalMs). */
  recheckIntervalMs: 10_000,
  /** A person's cached access decision older than this many recheck intervals stops deliveries. */
  verdictMaxAgeIntervals: 3
} as const

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
  /**
   * Several processes: Aedes' emitter, carrying what has subscribers in other processes
   * (alert notifications, session takeover) over Redis (cluster/bus-emitter.ts). Absent: Aedes'
   * own in-process mqemitter.
   */
  mq?: MQEmitter | null
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
