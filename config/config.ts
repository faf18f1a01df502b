import { X509Certificate } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import tls from 'node:tls'
import type { Keyring } from '../crypto/field-encryption.ts'
import { SecretKeyFormatError, parseSecretKeyFile, parseSecretKeyValue } from '../crypto/secret-keys.ts'
import { fileURLToPath } from 'node:url'
import { Compile } from 'typebox/compile'
import { mqttMaxOutgoingBytesAtLeast } from './schema/defaults.ts'
import { allowedText, variables } from './schema/schema.ts'
import type { Settings } from './schema/schema.ts'

/**
 * Every setting Vigil reads. The variables, their bounds and defaults are described once in
 * config/schema/schema.ts (defaults in config/schema/defaults.ts; docs/configuration.md is
 * generated from them). The defaults are the embedded mode: `npm start` on a fresh clone needs
 * none of these set.
 */
export interface Config {
  httpHost: string
  httpPort: number
  mqttHost: string
  mqttPort: number
  /**
   * Ports left at their defaults (HTTP_PORT/MQTT_PORT unset) may fall back to a free port when
   * the default is taken (a Mosquitto on 1883 is common); ports that were set never do.
   */
  defaultPorts: { http: boolean, mqtt: boolean }
  /** MQTT over TLS; null when MQTT_TLS_PORT is unset. */
  mqttTls: MqttTlsConfig | null
  /** MQTT over WebSocket (path `/mqtt`); null when unset. */
  mqttWsPort: number | null
  mqttMaxPacketBytes: number
  /** Bytes queued for one connection's socket past which the connection is dropped (slow reader). */
  mqttMaxOutgoingBytes: number
  mqttMaxTopicLevels: number
  /** Largest keepalive a client may ask for; 0: no limit (and keepalive 0 is allowed). */
  mqttKeepaliveLimitSeconds: number
  /** How long a connection may stay open without completing CONNECT (also the TLS handshake). */
  mqttConnectTimeoutSeconds: number
  /** Inbound QoS 2 messages one client may hold awaiting PUBREL. */
  mqttMaxInflightQos2: number
  /** New connections per minute from one address (IPv6: one /64); 0: no limit. */
  mqttConnectRatePerAddress: number
  /** Refused credentials from one address within the window that lock it out; 0: never. */
  mqttAuthFailuresBeforeLockout: number
  mqttAuthFailureWindowSeconds: number
  mqttLockoutSeconds: number
  /** HTTPS for the API (on HTTP_PORT) when both files are set. */
  httpTls: TlsFiles | null
  databaseUrl: string | null
  influx: InfluxConfig | null
  dataDir: string
  adminToken: string | null
  alertRulesPath: string
  workerThreads: number
  /** Voice notes and jobs (issue 5). */
  voiceNoteMaxBytes: number
  voiceNoteMaxSeconds: number
  /** `pocketsphinx` or the absolute path of an engine module. */
  transcriptionEngine: string
  jobLeaseSeconds: number
  jobMaxAttempts: number
  /** DEIDENTIFY_K_MIN. */
  deidentifyKMin: number
  /** DEIDENTIFY_EXPORT_TTL_HOURS. */
  deidentifyExportTtlHours: number
  /** BULK_EXPORT_TTL_HOURS. */
  bulkExportTtlHours: number
  spoolMaxBytes: number
  /** Free space kept in the data directory: below it publishes and API writes are refused (VIGIL_DISK_RESERVE_MB). */
  diskReserveBytes: number
  /** Readings this long before a device's first assignment still belong to it (VIGIL_ASSIGNMENT_TOLERANCE_SECONDS). */
  assignmentToleranceMs: number
  /** Several processes on one Postgres: the longest a dead leader's tasks stay unrun (VIGIL_LEADER_TAKEOVER_SECONDS). */
  leaderTakeoverSeconds: number
  /** API requests per minute per token, and per address without a valid token. */
  apiRateLimitPerMinute: number
  apiUnauthenticatedRateLimitPerMinute: number
  /** MQTT_PROXY_PROTOCOL: listeners read a PROXY header from trusted proxies (TRUST_PROXY). */
  mqttProxyProtocol: boolean
  /** TRUST_PROXY: addresses and CIDR ranges of the reverse proxies in front of the API (empty: none). */
  trustedProxies: string[]
  /** Load shedding: mean event-loop delay (ms) past which API requests get 503; 0: off (API_MAX_EVENT_LOOP_DELAY_MS). */
  apiMaxEventLoopDelayMs: number
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
  /**
   * Field-encryption keys for PHI at rest (VIGIL_SECRET_KEY or VIGIL_SECRET_KEY_FILE); null:
   * the embedded default, a key file Vigil creates in dataDir (with a warning).
   */
  secretKeys: { source: 'VIGIL_SECRET_KEY' | 'VIGIL_SECRET_KEY_FILE', keyring: Keyring } | null
  /** People and sessions (issue 3): token lifetimes, lockout, break-glass. */
  access: AccessConfig
  /** VIGIL_PASSWORD_SCRYPT_LOG2_N: scrypt cost (log2 N) of new password hashes. */
  passwordScryptLog2N: number
  /** Clustering (REDIS_URL, REDIS_PREFIX); null: one process, no Redis. */
  cluster: ClusterConfig | null
}

export interface ClusterConfig {
  redisUrl: string
  /** Of every key and channel. */
  prefix: string
}

export interface AccessConfig {
  accessTokenTtlSeconds: number
  sessionIdleSeconds: number
  sessionMaxSeconds: number
  loginMaxFailures: number
  loginLockoutSeconds: number
  breakGlassMinutes: number
  breakGlassGrantsPerHour: number
  loginsPerAddressPerMinute: number
  loginsPerAccountPerMinute: number
}

export interface TlsFiles {
  certFile: string
  keyFile: string
}

export interface MqttTlsConfig extends TlsFiles {
  port: number
  /** CA bundle for client certificates: set, every TLS client must present one it signed (mutual TLS). */
  caFile: string | null
}

export interface InfluxConfig {
  url: string
  token: string
  org: string
  bucket: string
  /** v2: `/api/v2/write` (InfluxDB 1.8+, 2.x, 3.x). v1: `/write` for InfluxDB before 1.8. auto: ask `/ping`. */
  api: 'auto' | 'v1' | 'v2'
  /** Gzip write bodies over 4 KiB (INFLUX_WRITE_GZIP). Default false: CPU matters more than bytes on a LAN. */
  gzipWrites?: boolean
}

export class ConfigError extends Error {
  constructor (readonly variable: string, message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}

type Env = Record<string, string | undefined>

function read (env: Env, name: string): string | undefined {
  const value = env[name]
  return value === undefined || value.trim() === '' ? undefined : value.trim()
}

// One compiled validator per variable, built once: checking a variable alone names it.
const validators = new Map(variables().map(([name, schema]) => [name, Compile(schema)]))

/**
 * Every variable checked against config/schema/schema.ts, in one place and before anything else
 * is built: its type and bounds, allowed values, a URL's scheme, a file's readability. Unset
 * variables take their default from the one defaults object. A bad value throws a ConfigError
 * naming the variable and what it allows; a secret's value is never repeated.
 */
export function parseEnvironment (env: Env): Settings {
  const settings: Record<string, unknown> = {}
  for (const [name, schema] of variables()) {
    const raw = read(env, name)
    if (raw === undefined) {
      if (schema.default !== undefined) settings[name] = schema.default
      continue
    }
    const value = schema.type === 'integer' && /^-?\d+$/.test(raw) ? Number(raw) : raw
    if (!validators.get(name)!.Check(value)) {
      const got = schema.secret === true ? '' : ` (got "${raw}")`
      throw new ConfigError(name, `${name} must be ${allowedText(schema) ?? 'valid'}${got}`)
    }
    if (schema.protocols !== undefined) settings[name] = url(name, raw, schema.protocols)
    else if (schema.file === true || (schema.anyOf?.some((branch) => branch.file === true) === true && !schema.anyOf.some((branch) => branch.const === raw))) settings[name] = readableFile(name, raw)
    else settings[name] = value
  }
  return settings as Settings
}

function readableFile (name: string, raw: string): string {
  const file = path.resolve(raw)
  try {
    fs.accessSync(file, fs.constants.R_OK)
    if (!fs.statSync(file).isFile()) throw new Error('not a regular file')
  } catch (err) {
    throw new ConfigError(name, `${name} must name a readable file (${file}: ${(err as Error).message})`)
  }
  return file
}

/** The URL's text as given; the message names the allowed schemes, never the value (it may hold a password). */
function url (name: string, raw: string, protocols: readonly string[]): string {
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    throw new ConfigError(name, `${name} must be a URL (${protocols.join(' or ')})`)
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(name, `${name} must use ${protocols.join(' or ')} (got ${parsed.protocol})`)
  }
  return raw
}

type FileVariable = 'HTTP_TLS_CERT_FILE' | 'HTTP_TLS_KEY_FILE' | 'MQTT_TLS_CERT_FILE' | 'MQTT_TLS_KEY_FILE'

/**
 * A certificate and key pair checked the way the TLS server will use them, so a wrong file or a
 * key that does not match its certificate stops start-up here and not at the first handshake.
 */
function tlsFiles (s: Settings, certName: FileVariable, keyName: FileVariable): TlsFiles | null {
  const certFile = s[certName] ?? null
  const keyFile = s[keyName] ?? null
  if (certFile === null && keyFile === null) return null
  if (certFile === null) throw new ConfigError(certName, `${certName} must be set with ${keyName} (PEM certificate chain)`)
  if (keyFile === null) throw new ConfigError(keyName, `${keyName} must be set with ${certName} (PEM private key)`)
  const cert = fs.readFileSync(certFile)
  try {
    new X509Certificate(cert)
  } catch (err) {
    throw new ConfigError(certName, `${certName} must hold a PEM certificate (${certFile}: ${(err as Error).message})`)
  }
  try {
    tls.createSecureContext({ cert, key: fs.readFileSync(keyFile) })
  } catch (err) {
    throw new ConfigError(keyName, `${keyName} must hold the PEM private key of the certificate in ${certName} (${keyFile}: ${(err as Error).message})`)
  }
  return { certFile, keyFile }
}

function mqttTls (s: Settings): MqttTlsConfig | null {
  const port = s.MQTT_TLS_PORT
  if (port === undefined) {
    for (const name of ['MQTT_TLS_CERT_FILE', 'MQTT_TLS_KEY_FILE', 'MQTT_TLS_CA_FILE'] as const) {
      if (s[name] !== undefined) throw new ConfigError(name, `${name} is set but MQTT_TLS_PORT is not: set MQTT_TLS_PORT to serve MQTT over TLS`)
    }
    return null
  }
  const files = tlsFiles(s, 'MQTT_TLS_CERT_FILE', 'MQTT_TLS_KEY_FILE')
  if (files === null) {
    throw new ConfigError('MQTT_TLS_CERT_FILE', 'MQTT_TLS_CERT_FILE and MQTT_TLS_KEY_FILE must be set when MQTT_TLS_PORT is (PEM certificate chain and private key)')
  }
  const caFile = s.MQTT_TLS_CA_FILE ?? null
  if (caFile !== null) {
    try {
      new X509Certificate(fs.readFileSync(caFile))
    } catch (err) {
      throw new ConfigError('MQTT_TLS_CA_FILE', `MQTT_TLS_CA_FILE must hold PEM CA certificates (${caFile}: ${(err as Error).message})`)
    }
  }
  return { port, ...files, caFile }
}

function secretKeys (s: Settings): Config['secretKeys'] {
  const value = s.VIGIL_SECRET_KEY
  const file = s.VIGIL_SECRET_KEY_FILE
  if (value !== undefined && file !== undefined) {
    throw new ConfigError('VIGIL_SECRET_KEY', 'VIGIL_SECRET_KEY and VIGIL_SECRET_KEY_FILE are both set: set one')
  }
  try {
    if (value !== undefined) return { source: 'VIGIL_SECRET_KEY', keyring: parseSecretKeyValue(value) }
    if (file !== undefined) return { source: 'VIGIL_SECRET_KEY_FILE', keyring: parseSecretKeyFile(fs.readFileSync(file, 'utf8')) }
  } catch (err) {
    if (!(err instanceof SecretKeyFormatError)) throw err
    const name = value !== undefined ? 'VIGIL_SECRET_KEY' : 'VIGIL_SECRET_KEY_FILE'
    throw new ConfigError(name, `${name} ${err.message}`)
  }
  return null
}

function accessConfig (s: Settings): AccessConfig {
  if (s.VIGIL_SESSION_MAX_SECONDS < s.VIGIL_SESSION_IDLE_SECONDS) {
    throw new ConfigError('VIGIL_SESSION_MAX_SECONDS', `VIGIL_SESSION_MAX_SECONDS must be at least VIGIL_SESSION_IDLE_SECONDS (${s.VIGIL_SESSION_IDLE_SECONDS})`)
  }
  return {
    accessTokenTtlSeconds: s.VIGIL_ACCESS_TOKEN_TTL_SECONDS,
    sessionIdleSeconds: s.VIGIL_SESSION_IDLE_SECONDS,
    sessionMaxSeconds: s.VIGIL_SESSION_MAX_SECONDS,
    loginMaxFailures: s.VIGIL_LOGIN_MAX_FAILURES,
    loginLockoutSeconds: s.VIGIL_LOGIN_LOCKOUT_SECONDS,
    breakGlassMinutes: s.VIGIL_BREAK_GLASS_MINUTES,
    breakGlassGrantsPerHour: s.VIGIL_BREAK_GLASS_PER_HOUR,
    loginsPerAddressPerMinute: s.VIGIL_LOGIN_RATE_PER_ADDRESS,
    loginsPerAccountPerMinute: s.VIGIL_LOGIN_RATE_PER_ACCOUNT
  }
}

/**
 * TRUST_PROXY as Fastify's trustProxy takes it: each entry an address or a CIDR range. Names
 * (`loopback`, `true`, hop counts) are refused on purpose: trusting every sender would let any
 * client choose the address its limits and audit rows are kept under.
 */
function trustedProxies (raw: string | undefined): string[] {
  if (raw === undefined) return []
  const entries = raw.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '')
  for (const entry of entries) {
    const [address, prefix, extra] = entry.split('/')
    const family = net.isIP(address ?? '')
    const maxPrefix = family === 4 ? 32 : 128
    const prefixOk = prefix === undefined || (/^\d{1,3}$/.test(prefix) && Number(prefix) <= maxPrefix)
    if (family === 0 || !prefixOk || extra !== undefined) {
      throw new ConfigError('TRUST_PROXY', `TRUST_PROXY must be a comma-separated list of IP addresses or CIDR ranges (got "${entry}")`)
    }
  }
  return entries
}

function mqttProxyProtocol (s: Settings): boolean {
  if (s.MQTT_PROXY_PROTOCOL === 'false') return false
  if (trustedProxies(s.TRUST_PROXY).length === 0) {
    throw new ConfigError('MQTT_PROXY_PROTOCOL', 'MQTT_PROXY_PROTOCOL=true needs TRUST_PROXY: the addresses of the proxies allowed to send a PROXY header')
  }
  return true
}

/** The documented default rules shipped next to this file (not relative to the working directory). */
export const defaultAlertRulesPath = fileURLToPath(new URL('./alert-rules.yaml', import.meta.url))

/**
 * Reads and validates the environment (parseEnvironment), then the rules between variables.
 * Throws ConfigError naming the first bad variable.
 */
export function loadConfig (env: Env = process.env, cpuCount = 2): Config {
  const s = parseEnvironment(env)
  let influx: InfluxConfig | null = null
  if (s.INFLUX_URL !== undefined) {
    influx = { url: s.INFLUX_URL.replace(/\/+$/, ''), token: s.INFLUX_TOKEN, org: s.INFLUX_ORG, bucket: s.INFLUX_BUCKET, api: s.INFLUX_API, gzipWrites: s.INFLUX_WRITE_GZIP === 'true' }
  } else {
    for (const name of ['INFLUX_TOKEN', 'INFLUX_ORG', 'INFLUX_BUCKET', 'INFLUX_API', 'INFLUX_WRITE_GZIP']) {
      if (read(env, name) !== undefined) throw new ConfigError(name, `${name} is set but INFLUX_URL is not: set INFLUX_URL to use InfluxDB`)
    }
  }
  const mqttMaxOutgoingBytes = s.MQTT_MAX_OUTGOING_BYTES ?? Math.max(mqttMaxOutgoingBytesAtLeast, 4 * s.MQTT_MAX_PACKET_BYTES)
  // A subscriber is dropped when it falls this far behind, so the bound can never be below one packet.
  if (mqttMaxOutgoingBytes < s.MQTT_MAX_PACKET_BYTES) {
    throw new ConfigError('MQTT_MAX_OUTGOING_BYTES', `MQTT_MAX_OUTGOING_BYTES must be at least MQTT_MAX_PACKET_BYTES (${s.MQTT_MAX_PACKET_BYTES}) (got "${mqttMaxOutgoingBytes}")`)
  }
  return {
    httpHost: s.HTTP_HOST,
    httpPort: s.HTTP_PORT,
    mqttHost: s.MQTT_HOST ?? s.HTTP_HOST,
    mqttPort: s.MQTT_PORT,
    defaultPorts: { http: read(env, 'HTTP_PORT') === undefined, mqtt: read(env, 'MQTT_PORT') === undefined },
    mqttTls: mqttTls(s),
    mqttWsPort: s.MQTT_WS_PORT ?? null,
    mqttMaxPacketBytes: s.MQTT_MAX_PACKET_BYTES,
    mqttMaxOutgoingBytes,
    mqttMaxTopicLevels: s.MQTT_MAX_TOPIC_LEVELS,
    mqttKeepaliveLimitSeconds: s.MQTT_KEEPALIVE_LIMIT_SECONDS,
    mqttConnectTimeoutSeconds: s.MQTT_CONNECT_TIMEOUT_SECONDS,
    mqttMaxInflightQos2: s.MQTT_MAX_INFLIGHT_QOS2,
    mqttConnectRatePerAddress: s.MQTT_CONNECT_RATE_PER_ADDRESS,
    mqttAuthFailuresBeforeLockout: s.MQTT_AUTH_FAILURES_BEFORE_LOCKOUT,
    mqttAuthFailureWindowSeconds: s.MQTT_AUTH_FAILURE_WINDOW_SECONDS,
    mqttLockoutSeconds: s.MQTT_LOCKOUT_SECONDS,
    httpTls: tlsFiles(s, 'HTTP_TLS_CERT_FILE', 'HTTP_TLS_KEY_FILE'),
    databaseUrl: s.DATABASE_URL ?? null,
    influx,
    dataDir: path.resolve(s.VIGIL_DATA_DIR),
    adminToken: s.VIGIL_ADMIN_TOKEN ?? null,
    alertRulesPath: s.VIGIL_ALERT_RULES ?? defaultAlertRulesPath,
    workerThreads: s.WORKER_THREADS ?? Math.max(1, cpuCount),
    voiceNoteMaxBytes: s.VOICE_NOTE_MAX_BYTES,
    voiceNoteMaxSeconds: s.VOICE_NOTE_MAX_SECONDS,
    transcriptionEngine: s.TRANSCRIPTION_ENGINE,
    jobLeaseSeconds: s.JOB_LEASE_SECONDS,
    jobMaxAttempts: s.JOB_MAX_ATTEMPTS,
    deidentifyKMin: s.DEIDENTIFY_K_MIN,
    deidentifyExportTtlHours: s.DEIDENTIFY_EXPORT_TTL_HOURS,
    bulkExportTtlHours: s.BULK_EXPORT_TTL_HOURS,
    spoolMaxBytes: s.VIGIL_SPOOL_MAX_BYTES,
    assignmentToleranceMs: s.VIGIL_ASSIGNMENT_TOLERANCE_SECONDS * 1000,
    leaderTakeoverSeconds: s.VIGIL_LEADER_TAKEOVER_SECONDS,
    diskReserveBytes: s.VIGIL_DISK_RESERVE_MB * 1024 * 1024,
    apiRateLimitPerMinute: s.API_RATE_LIMIT_PER_MINUTE,
    apiUnauthenticatedRateLimitPerMinute: s.API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE,
    trustedProxies: trustedProxies(s.TRUST_PROXY),
    mqttProxyProtocol: mqttProxyProtocol(s),
    apiMaxEventLoopDelayMs: s.API_MAX_EVENT_LOOP_DELAY_MS,
    logLevel: s.LOG_LEVEL,
    secretKeys: secretKeys(s),
    access: accessConfig(s),
    passwordScryptLog2N: s.VIGIL_PASSWORD_SCRYPT_LOG2_N,
    cluster: clusterConfig(s)
  }
}

/** Several processes share Postgres: each process's embedded PGlite would be a fleet of its own. */
function clusterConfig (s: Settings): ClusterConfig | null {
  if (s.REDIS_URL === undefined) return null
  if (s.DATABASE_URL === undefined) throw new ConfigError('REDIS_URL', 'REDIS_URL is set but DATABASE_URL is not: the processes of a cluster share one PostgreSQL (set DATABASE_URL)')
  // Without a key given, each process would create its own in its data directory and could not
  // read the PHI the others encrypted.
  if (s.VIGIL_SECRET_KEY === undefined && s.VIGIL_SECRET_KEY_FILE === undefined) {
    throw new ConfigError('VIGIL_SECRET_KEY', 'VIGIL_SECRET_KEY (or VIGIL_SECRET_KEY_FILE) must be set when REDIS_URL is: the processes of a cluster share one PHI key (openssl rand -base64 32)')
  }
  return { redisUrl: s.REDIS_URL, prefix: s.REDIS_PREFIX }
}
