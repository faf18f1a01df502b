import { X509Certificate } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import tls from 'node:tls'
import type { Keyring } from '../crypto/field-encryption.ts'
import { SecretKeyFormatError, parseSecretKeyFile, parseSecretKeyValue } from '../crypto/secret-keys.ts'
import { fileURLToPath } from 'node:url'
import { DEFAULT_DISK_RESERVE_BYTES } from '../store/disk-reserve.ts'

/**
 * Every setting Vigil reads, with its default. The defaults are the embedded mode:
 * `npm start` on a fresh clone needs none of these set.
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
  spoolMaxBytes: number
  /** Free space kept in the data directory: below it publishes and API writes are refused (VIGIL_DISK_RESERVE_MB). */
  diskReserveBytes: number
  /** Readings this long before a device's first assignment still belong to it (VIGIL_ASSIGNMENT_TOLERANCE_SECONDS). */
  assignmentToleranceMs: number
  /** API requests per minute per token, and per address without a valid token. */
  apiRateLimitPerMinute: number
  apiUnauthenticatedRateLimitPerMinute: number
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
  /**
   * Field-encryption keys for PHI at rest (VIGIL_SECRET_KEY or VIGIL_SECRET_KEY_FILE); null:
   * the embedded default, a key file Vigil creates in dataDir (with a warning).
   */
  secretKeys: { source: 'VIGIL_SECRET_KEY' | 'VIGIL_SECRET_KEY_FILE', keyring: Keyring } | null
  /** People and sessions (issue 3): token lifetimes, lockout, break-glass. */
  access: AccessConfig
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

function integer (env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = read(env, name)
  if (raw === undefined) return fallback
  if (!/^-?\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new ConfigError(name, `${name} must be an integer between ${min} and ${max} (got "${raw}")`)
  }
  return Number(raw)
}

function optionalPort (env: Env, name: string): number | null {
  return read(env, name) === undefined ? null : integer(env, name, 0, 0, 65535)
}

function readableFile (env: Env, name: string): string | null {
  const raw = read(env, name)
  if (raw === undefined) return null
  const file = path.resolve(raw)
  try {
    fs.accessSync(file, fs.constants.R_OK)
    if (!fs.statSync(file).isFile()) throw new Error('not a regular file')
  } catch (err) {
    throw new ConfigError(name, `${name} must name a readable file (${file}: ${(err as Error).message})`)
  }
  return file
}

/**
 * A certificate and key pair checked the way the TLS server will use them, so a wrong file or a
 * key that does not match its certificate stops start-up here and not at the first handshake.
 */
function tlsFiles (env: Env, certName: string, keyName: string): TlsFiles | null {
  const certFile = readableFile(env, certName)
  const keyFile = readableFile(env, keyName)
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

/**
 * `pocketsphinx` (built in, with the clinical language model), `pocketsphinx-generic` (its
 * stock US English model), or a readable ES module file exporting an engine factory.
 */
function transcriptionEngine (env: Env): string {
  const raw = read(env, 'TRANSCRIPTION_ENGINE')
  if (raw === undefined || raw === 'pocketsphinx') return 'pocketsphinx'
  if (raw === 'pocketsphinx-generic') return raw
  if (!/\.(m?js|ts)$/.test(raw)) {
    throw new ConfigError('TRANSCRIPTION_ENGINE', `TRANSCRIPTION_ENGINE must be "pocketsphinx", "pocketsphinx-generic" or the path of an engine module (.js, .mjs or .ts) (got "${raw}")`)
  }
  const file = readableFile(env, 'TRANSCRIPTION_ENGINE')!
  return file
}

function mqttTls (env: Env): MqttTlsConfig | null {
  const port = optionalPort(env, 'MQTT_TLS_PORT')
  const names = ['MQTT_TLS_CERT_FILE', 'MQTT_TLS_KEY_FILE', 'MQTT_TLS_CA_FILE']
  if (port === null) {
    for (const name of names) {
      if (read(env, name) !== undefined) throw new ConfigError(name, `${name} is set but MQTT_TLS_PORT is not: set MQTT_TLS_PORT to serve MQTT over TLS`)
    }
    return null
  }
  const files = tlsFiles(env, 'MQTT_TLS_CERT_FILE', 'MQTT_TLS_KEY_FILE')
  if (files === null) {
    throw new ConfigError('MQTT_TLS_CERT_FILE', 'MQTT_TLS_CERT_FILE and MQTT_TLS_KEY_FILE must be set when MQTT_TLS_PORT is (PEM certificate chain and private key)')
  }
  const caFile = readableFile(env, 'MQTT_TLS_CA_FILE')
  if (caFile !== null) {
    try {
      new X509Certificate(fs.readFileSync(caFile))
    } catch (err) {
      throw new ConfigError('MQTT_TLS_CA_FILE', `MQTT_TLS_CA_FILE must hold PEM CA certificates (${caFile}: ${(err as Error).message})`)
    }
  }
  return { port, ...files, caFile }
}

function oneOf<T extends string> (env: Env, name: string, allowed: readonly T[], fallback: T): T {
  const raw = read(env, name)
  if (raw === undefined) return fallback
  if (!(allowed as readonly string[]).includes(raw)) {
    throw new ConfigError(name, `${name} must be one of ${allowed.join(', ')} (got "${raw}")`)
  }
  return raw as T
}

function url (env: Env, name: string, protocols: readonly string[]): string | null {
  const raw = read(env, name)
  if (raw === undefined) return null
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

function secretKeys (env: Env): Config['secretKeys'] {
  const value = read(env, 'VIGIL_SECRET_KEY')
  const file = readableFile(env, 'VIGIL_SECRET_KEY_FILE')
  if (value !== undefined && file !== null) {
    throw new ConfigError('VIGIL_SECRET_KEY', 'VIGIL_SECRET_KEY and VIGIL_SECRET_KEY_FILE are both set: set one')
  }
  try {
    if (value !== undefined) return { source: 'VIGIL_SECRET_KEY', keyring: parseSecretKeyValue(value) }
    if (file !== null) return { source: 'VIGIL_SECRET_KEY_FILE', keyring: parseSecretKeyFile(fs.readFileSync(file, 'utf8')) }
  } catch (err) {
    if (!(err instanceof SecretKeyFormatError)) throw err
    const name = value !== undefined ? 'VIGIL_SECRET_KEY' : 'VIGIL_SECRET_KEY_FILE'
    throw new ConfigError(name, `${name} ${err.message}`)
  }
  return null
}

function accessConfig (env: Env): AccessConfig {
  // Short-lived access tokens (15 min) with a refresh path; a session idle 30 min is over
  // (HIPAA §164.312(a)(2)(iii) automatic logoff); 5 failures lock an account for 15 min.
  const sessionIdleSeconds = integer(env, 'VIGIL_SESSION_IDLE_SECONDS', 1800, 60, 7 * 86_400)
  const accessTokenTtlSeconds = integer(env, 'VIGIL_ACCESS_TOKEN_TTL_SECONDS', 900, 30, 86_400)
  const sessionMaxSeconds = integer(env, 'VIGIL_SESSION_MAX_SECONDS', 12 * 3600, 300, 30 * 86_400)
  if (sessionMaxSeconds < sessionIdleSeconds) {
    throw new ConfigError('VIGIL_SESSION_MAX_SECONDS', `VIGIL_SESSION_MAX_SECONDS must be at least VIGIL_SESSION_IDLE_SECONDS (${sessionIdleSeconds})`)
  }
  return {
    accessTokenTtlSeconds,
    sessionIdleSeconds,
    sessionMaxSeconds,
    loginMaxFailures: integer(env, 'VIGIL_LOGIN_MAX_FAILURES', 5, 1, 1000),
    loginLockoutSeconds: integer(env, 'VIGIL_LOGIN_LOCKOUT_SECONDS', 900, 1, 86_400),
    breakGlassMinutes: integer(env, 'VIGIL_BREAK_GLASS_MINUTES', 60, 1, 24 * 60),
    breakGlassGrantsPerHour: integer(env, 'VIGIL_BREAK_GLASS_PER_HOUR', 10, 1, 1000),
    // Checked before the password is hashed (0.65 s of scrypt each): a flood costs no CPU.
    loginsPerAddressPerMinute: integer(env, 'VIGIL_LOGIN_RATE_PER_ADDRESS', 20, 1, 1_000_000),
    loginsPerAccountPerMinute: integer(env, 'VIGIL_LOGIN_RATE_PER_ACCOUNT', 10, 1, 1_000_000)
  }
}

/** The documented default rules shipped next to this file (not relative to the working directory). */
export const defaultAlertRulesPath = fileURLToPath(new URL('./alert-rules.yaml', import.meta.url))

/** Reads and validates the environment. Throws ConfigError naming the first bad variable. */
export function loadConfig (env: Env = process.env, cpuCount = 2): Config {
  const httpHost = read(env, 'HTTP_HOST') ?? '127.0.0.1'
  const influxUrl = url(env, 'INFLUX_URL', ['http:', 'https:'])
  let influx: InfluxConfig | null = null
  if (influxUrl !== null) {
    influx = {
      url: influxUrl.replace(/\/+$/, ''),
      token: read(env, 'INFLUX_TOKEN') ?? '',
      org: read(env, 'INFLUX_ORG') ?? 'vigil',
      bucket: read(env, 'INFLUX_BUCKET') ?? 'vigil',
      api: oneOf(env, 'INFLUX_API', ['auto', 'v1', 'v2'] as const, 'auto')
    }
  } else {
    for (const name of ['INFLUX_TOKEN', 'INFLUX_ORG', 'INFLUX_BUCKET', 'INFLUX_API']) {
      if (read(env, name) !== undefined) throw new ConfigError(name, `${name} is set but INFLUX_URL is not: set INFLUX_URL to use InfluxDB`)
    }
  }
  const adminToken = read(env, 'VIGIL_ADMIN_TOKEN') ?? null
  if (adminToken !== null && adminToken.length < 24) {
    throw new ConfigError('VIGIL_ADMIN_TOKEN', 'VIGIL_ADMIN_TOKEN must be at least 24 characters (use e.g. `openssl rand -hex 24`)')
  }
  const dataDir = path.resolve(read(env, 'VIGIL_DATA_DIR') ?? './data')
  const mqttMaxPacketBytes = integer(env, 'MQTT_MAX_PACKET_BYTES', 256 * 1024, 1024, 256 * 1024 * 1024)
  // Room for several packets of the largest size: a subscriber is dropped when it falls this far
  // behind, so the bound can never be below one packet.
  const mqttMaxOutgoingBytes = integer(env, 'MQTT_MAX_OUTGOING_BYTES', Math.max(1024 * 1024, 4 * mqttMaxPacketBytes), mqttMaxPacketBytes, 1024 * 1024 * 1024)
  return {
    httpHost,
    httpPort: integer(env, 'HTTP_PORT', 3000, 0, 65535),
    mqttHost: read(env, 'MQTT_HOST') ?? httpHost,
    mqttPort: integer(env, 'MQTT_PORT', 1883, 0, 65535),
    defaultPorts: { http: read(env, 'HTTP_PORT') === undefined, mqtt: read(env, 'MQTT_PORT') === undefined },
    mqttTls: mqttTls(env),
    mqttWsPort: optionalPort(env, 'MQTT_WS_PORT'),
    mqttMaxPacketBytes,
    mqttMaxOutgoingBytes,
    // devices/{id}/telemetry and devices/{id}/# have 3 levels; Aedes caps the setting at 100.
    mqttMaxTopicLevels: integer(env, 'MQTT_MAX_TOPIC_LEVELS', 8, 3, 100),
    mqttKeepaliveLimitSeconds: integer(env, 'MQTT_KEEPALIVE_LIMIT_SECONDS', 1200, 0, 65535),
    mqttConnectTimeoutSeconds: integer(env, 'MQTT_CONNECT_TIMEOUT_SECONDS', 10, 1, 300),
    mqttMaxInflightQos2: integer(env, 'MQTT_MAX_INFLIGHT_QOS2', 100, 1, 65535),
    mqttConnectRatePerAddress: integer(env, 'MQTT_CONNECT_RATE_PER_ADDRESS', 600, 0, 1_000_000),
    mqttAuthFailuresBeforeLockout: integer(env, 'MQTT_AUTH_FAILURES_BEFORE_LOCKOUT', 10, 0, 1_000_000),
    mqttAuthFailureWindowSeconds: integer(env, 'MQTT_AUTH_FAILURE_WINDOW_SECONDS', 60, 1, 86_400),
    mqttLockoutSeconds: integer(env, 'MQTT_LOCKOUT_SECONDS', 300, 1, 86_400),
    httpTls: tlsFiles(env, 'HTTP_TLS_CERT_FILE', 'HTTP_TLS_KEY_FILE'),
    databaseUrl: url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']),
    influx,
    dataDir,
    adminToken,
    alertRulesPath: readableFile(env, 'VIGIL_ALERT_RULES') ?? defaultAlertRulesPath,
    workerThreads: integer(env, 'WORKER_THREADS', Math.max(1, cpuCount), 1, 256),
    voiceNoteMaxBytes: integer(env, 'VOICE_NOTE_MAX_BYTES', 25 * 1024 * 1024, 1024, 256 * 1024 * 1024),
    voiceNoteMaxSeconds: integer(env, 'VOICE_NOTE_MAX_SECONDS', 600, 1, 4 * 3600),
    transcriptionEngine: transcriptionEngine(env),
    jobLeaseSeconds: integer(env, 'JOB_LEASE_SECONDS', 60, 2, 3600),
    jobMaxAttempts: integer(env, 'JOB_MAX_ATTEMPTS', 3, 1, 100),
    spoolMaxBytes: integer(env, 'VIGIL_SPOOL_MAX_BYTES', 1024 * 1024 * 1024, 64 * 1024, Number.MAX_SAFE_INTEGER),
    // Default: two 16 MB WAL segments and a margin (store/disk-reserve.ts). 0 turns the guard off.
    // A device clock a little behind the server's stamps its first readings before the
    // assignment made on the server (issue 12: 1.5 s).
    assignmentToleranceMs: integer(env, 'VIGIL_ASSIGNMENT_TOLERANCE_SECONDS', 300, 0, 86_400) * 1000,
    diskReserveBytes: integer(env, 'VIGIL_DISK_RESERVE_MB', DEFAULT_DISK_RESERVE_BYTES / (1024 * 1024), 0, 1024 * 1024) * 1024 * 1024,
    // 100 requests/s per token: room for provisioning tools and dashboards; per address
    // without a token, enough for a person browsing /docs, not for a guessing script.
    apiRateLimitPerMinute: integer(env, 'API_RATE_LIMIT_PER_MINUTE', 6000, 1, 10_000_000),
    apiUnauthenticatedRateLimitPerMinute: integer(env, 'API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE', 120, 1, 10_000_000),
    logLevel: oneOf(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'info'),
    secretKeys: secretKeys(env),
    access: accessConfig(env)
  }
}
