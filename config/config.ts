import path from 'node:path'

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
  mqttTlsPort: number | null
  mqttWsPort: number | null
  mqttMaxPacketBytes: number
  databaseUrl: string | null
  influx: InfluxConfig | null
  dataDir: string
  adminToken: string | null
  alertRulesPath: string
  workerThreads: number
  spoolMaxBytes: number
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
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
  return {
    httpHost,
    httpPort: integer(env, 'HTTP_PORT', 3000, 0, 65535),
    mqttHost: read(env, 'MQTT_HOST') ?? httpHost,
    mqttPort: integer(env, 'MQTT_PORT', 1883, 0, 65535),
    defaultPorts: { http: read(env, 'HTTP_PORT') === undefined, mqtt: read(env, 'MQTT_PORT') === undefined },
    mqttTlsPort: optionalPort(env, 'MQTT_TLS_PORT'),
    mqttWsPort: optionalPort(env, 'MQTT_WS_PORT'),
    mqttMaxPacketBytes: integer(env, 'MQTT_MAX_PACKET_BYTES', 256 * 1024, 1024, 256 * 1024 * 1024),
    databaseUrl: url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']),
    influx,
    dataDir,
    adminToken,
    alertRulesPath: path.resolve(read(env, 'VIGIL_ALERT_RULES') ?? './config/alert-rules.yaml'),
    workerThreads: integer(env, 'WORKER_THREADS', Math.max(1, cpuCount), 1, 256),
    spoolMaxBytes: integer(env, 'VIGIL_SPOOL_MAX_BYTES', 1024 * 1024 * 1024, 64 * 1024, Number.MAX_SAFE_INTEGER),
    logLevel: oneOf(env, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, 'info')
  }
}
