import { Type } from 'typebox'
import type { Static, TLiteral, TSchema } from 'typebox'
import { defaults } from './defaults.ts'

/**
 * The one description of Vigil's environment: every variable with its type, bounds, default
 * (from `defaults.ts`), section and meaning. `config/config.ts` validates the environment
 * against it and `npm run docs:config` writes docs/configuration.md from it (a test fails when
 * the page and the schema drift).
 *
 * Beyond JSON Schema, each variable's schema carries: `section` (the docs table it belongs to),
 * `defaultText` (how an unset variable behaves when the default is not one fixed value),
 * `secret` (a bad value is never echoed in an error), `protocols` (a URL's allowed schemes),
 * `file` (a path that must name a readable file, resolved against the working directory; on
 * a union's string branch: when the value is none of the literals) and
 * `allowed` (what an error says is allowed when the schema alone would not say it well).
 */

export const sections = ['API', 'MQTT', 'Storage', 'Alerts and workers', 'Voice notes and jobs', 'Security', 'People and sessions', 'Cluster', 'Logging'] as const
export type Section = typeof sections[number]

// A type, not an interface: TypeBox's options need an index signature.
export type VariableDoc = {
  section: Section
  description: string
  defaultText?: string
  secret?: true
  protocols?: readonly string[]
  file?: true
  allowed?: string
}

const integer = (minimum: number, maximum: number, doc: VariableDoc & { default?: number }) => Type.Integer({ minimum, maximum, ...doc })
const port = (doc: VariableDoc & { default?: number }) => integer(0, 65535, doc)
const text = (doc: VariableDoc & { default?: string, minLength?: number, pattern?: string }) => Type.String(doc)
const file = (doc: VariableDoc) => Type.String({ ...doc, file: true as const })
const url = (protocols: readonly string[], doc: VariableDoc) => Type.String({ ...doc, protocols })

const KiB = 1024
const MiB = 1024 * KiB

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

export const configSchema = Type.Object({
  // API
  HTTP_HOST: text({ section: 'API', default: defaults.HTTP_HOST, description: 'address the API listens on (`0.0.0.0` for all interfaces)' }),
  HTTP_PORT: port({ section: 'API', default: defaults.HTTP_PORT, description: 'API port; `0` picks a free port' }),
  HTTP_TLS_CERT_FILE: Type.Optional(file({ section: 'API', description: 'PEM certificate chain: set with `HTTP_TLS_KEY_FILE` and the API speaks HTTPS only (TLS 1.2+) on `HTTP_PORT`' })),
  HTTP_TLS_KEY_FILE: Type.Optional(file({ section: 'API', description: 'PEM private key of `HTTP_TLS_CERT_FILE`\'s certificate (the pair is read and checked at start)' })),
  API_RATE_LIMIT_PER_MINUTE: integer(1, 10_000_000, { section: 'API', default: defaults.API_RATE_LIMIT_PER_MINUTE, description: 'API requests per minute per token (429 with `Retry-After` beyond)' }),
  TRUST_PROXY: Type.Optional(text({ section: 'API', allowed: 'a comma-separated list of IP addresses or CIDR ranges (e.g. `10.0.0.5,172.16.0.0/12`)', description: 'the reverse proxies in front of the API: a request from one of them is taken to come from the client its `X-Forwarded-For` names, so per-address limits and audit rows see the client, not the proxy. Unset: the socket\'s address, forwarded headers ignored' })),
  API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE: integer(1, 10_000_000, { section: 'API', default: defaults.API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE, description: 'per client address, for requests without a valid token (public routes, 404s, failed authentication)' }),
  API_MAX_EVENT_LOOP_DELAY_MS: integer(0, 60_000, { section: 'API', default: defaults.API_MAX_EVENT_LOOP_DELAY_MS, description: 'load shedding: while the event loop\'s mean delay over a 5 s sample is past this, API requests get 503 `VIGIL_ERR_UNAVAILABLE` with `Retry-After` (not `/healthz`, `/metrics`), so the broker keeps up; `0` turns the check off' }),

  // MQTT
  MQTT_HOST: Type.Optional(text({ section: 'MQTT', defaultText: '`HTTP_HOST`', description: 'address the MQTT listeners (TCP, TLS, WebSocket) bind to' })),
  MQTT_PORT: port({ section: 'MQTT', default: defaults.MQTT_PORT, description: 'MQTT (TCP) port; `0` picks a free port' }),
  MQTT_TLS_PORT: Type.Optional(port({ section: 'MQTT', description: 'MQTT over TLS (8883 is the usual port; `0` picks a free one). Needs `MQTT_TLS_CERT_FILE` and `MQTT_TLS_KEY_FILE`' })),
  MQTT_TLS_CERT_FILE: Type.Optional(file({ section: 'MQTT', description: 'PEM certificate chain for `MQTT_TLS_PORT` (read and checked at start)' })),
  MQTT_TLS_KEY_FILE: Type.Optional(file({ section: 'MQTT', description: 'PEM private key of `MQTT_TLS_CERT_FILE`\'s certificate' })),
  MQTT_TLS_CA_FILE: Type.Optional(file({ section: 'MQTT', description: 'PEM CA bundle: set, every TLS client must present a certificate it signed whose common name is its device id (mutual TLS; the password is still required)' })),
  MQTT_WS_PORT: Type.Optional(port({ section: 'MQTT', description: 'MQTT over WebSocket, path `/mqtt` (plain `ws://`: put a TLS proxy in front for browsers); `0` picks a free port' })),
  MQTT_PROXY_PROTOCOL: Type.Union([Type.Literal('false'), Type.Literal('true')], { section: 'MQTT', default: defaults.MQTT_PROXY_PROTOCOL, description: '`true`: every MQTT connection (TCP, TLS, WebSocket) must start with a PROXY protocol header (v1 or v2, HAProxy `send-proxy`) and come from an address in `TRUST_PROXY`; per-address limits, lockouts and logs then see the device\'s address. Others are refused (`proxy_untrusted`, `proxy_header_invalid`). `false`: a PROXY header is refused like any bad packet' }),
  MQTT_MAX_PACKET_BYTES: integer(1024, 256 * MiB, { section: 'MQTT', default: defaults.MQTT_MAX_PACKET_BYTES, description: 'largest MQTT packet (also WebSocket message) accepted; a bigger one closes the connection before it is read' }),
  MQTT_MAX_OUTGOING_BYTES: Type.Optional(integer(1024, 1024 * MiB, { section: 'MQTT', defaultText: '`1048576` or 4 × `MQTT_MAX_PACKET_BYTES`, the larger', description: 'bytes queued for a client that is not reading, past which it is disconnected (at least `MQTT_MAX_PACKET_BYTES`)' })),
  MQTT_MAX_TOPIC_LEVELS: integer(3, 100, { section: 'MQTT', default: defaults.MQTT_MAX_TOPIC_LEVELS, description: 'deepest topic or filter accepted; deeper closes the connection' }),
  MQTT_KEEPALIVE_LIMIT_SECONDS: integer(0, 65535, { section: 'MQTT', default: defaults.MQTT_KEEPALIVE_LIMIT_SECONDS, description: 'largest keepalive a client may ask for; larger, or 0 (none), gets CONNACK 6. `0` here lifts the limit' }),
  MQTT_CONNECT_TIMEOUT_SECONDS: integer(1, 300, { section: 'MQTT', default: defaults.MQTT_CONNECT_TIMEOUT_SECONDS, description: 'time from accepting a socket to the CONNACK, credential check included (CONNACK 3 past it), and for the TLS handshake or WebSocket upgrade' }),
  MQTT_MAX_INFLIGHT_QOS2: integer(1, 65535, { section: 'MQTT', default: defaults.MQTT_MAX_INFLIGHT_QOS2, description: 'inbound QoS 2 messages one client may hold awaiting PUBREL; one more closes the connection' }),
  MQTT_CONNECT_RATE_PER_ADDRESS: integer(0, 1_000_000, { section: 'MQTT', default: defaults.MQTT_CONNECT_RATE_PER_ADDRESS, description: 'new connections per minute from one address (IPv6: one /64), any transport; `0` = no limit' }),
  MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: integer(0, 1_000_000, { section: 'MQTT', default: defaults.MQTT_AUTH_FAILURES_BEFORE_LOCKOUT, description: 'refused credentials from one address within the window that lock it out; `0` = never' }),
  MQTT_AUTH_FAILURE_WINDOW_SECONDS: integer(1, 86_400, { section: 'MQTT', default: defaults.MQTT_AUTH_FAILURE_WINDOW_SECONDS, description: 'the window for `MQTT_AUTH_FAILURES_BEFORE_LOCKOUT`' }),
  MQTT_LOCKOUT_SECONDS: integer(1, 86_400, { section: 'MQTT', default: defaults.MQTT_LOCKOUT_SECONDS, description: 'how long a locked-out address gets CONNACK 5 without a credential check' }),

  // Storage
  DATABASE_URL: Type.Optional(url(['postgres:', 'postgresql:'], { section: 'Storage', secret: true, description: 'PostgreSQL for metadata (and readings when `INFLUX_URL` is unset). Unset: embedded PGlite in `VIGIL_DATA_DIR/pglite`' })),
  INFLUX_URL: Type.Optional(url(['http:', 'https:'], { section: 'Storage', description: 'InfluxDB for readings. Unset: readings go to the Postgres `readings` table' })),
  INFLUX_TOKEN: text({ section: 'Storage', secret: true, default: defaults.INFLUX_TOKEN, description: 'InfluxDB 2.x/3.x token; for InfluxDB before 1.8 use `user:password` (basic auth)' }),
  INFLUX_ORG: text({ section: 'Storage', default: defaults.INFLUX_ORG, description: 'InfluxDB organisation (v2 write API)' }),
  INFLUX_BUCKET: text({ section: 'Storage', default: defaults.INFLUX_BUCKET, description: 'bucket (2.x/3.x) or database (1.x)' }),
  INFLUX_API: Type.Union([Type.Literal('auto'), Type.Literal('v1'), Type.Literal('v2')], { section: 'Storage', default: defaults.INFLUX_API, description: '`v2` writes to `/api/v2/write` (1.8+, 2.x, 3.x); `v1` writes to `/write` (before 1.8); `auto` asks `/ping`' }),
  INFLUX_WRITE_GZIP: Type.Union([Type.Literal('false'), Type.Literal('true')], { section: 'Storage', default: defaults.INFLUX_WRITE_GZIP, description: '`true`: gzip each write body over 4 KiB to about a third of its size, for an InfluxDB across a slow or metered link; Vigil then deflates (~1.5 µs of CPU a reading) and InfluxDB inflates (influxd 1.6: ~10 µs a reading more). `false`: bodies go as they are (at 17,000 readings/s about 23 Mbit/s), for a LAN or the same host' }),
  VIGIL_DATA_DIR: text({ section: 'Storage', default: defaults.VIGIL_DATA_DIR, description: 'embedded database, spool, `listening.json`' }),
  VIGIL_SPOOL_MAX_BYTES: integer(64 * KiB, Number.MAX_SAFE_INTEGER, { section: 'Storage', default: defaults.VIGIL_SPOOL_MAX_BYTES, description: 'spool size past which new publishes are refused without PUBACK (devices keep their data)' }),
  VIGIL_DISK_RESERVE_MB: integer(0, 1024 * 1024, { section: 'Storage', default: defaults.VIGIL_DISK_RESERVE_MB, description: 'free space kept in `VIGIL_DATA_DIR`: below it publishes are refused without PUBACK (`disk_low`) and `/v1` writes answer 503 ([disk reserve](durability.md#disk-reserve)); `0` = off' }),
  VIGIL_ASSIGNMENT_TOLERANCE_SECONDS: integer(0, 86_400, { section: 'Storage', default: defaults.VIGIL_ASSIGNMENT_TOLERANCE_SECONDS, description: 'a reading this long before a device\'s first assignment still belongs to it ([clock skew](durability.md#clock-skew-and-assignments))' }),
  VIGIL_LEADER_TAKEOVER_SECONDS: integer(3, 300, { section: 'Storage', default: defaults.VIGIL_LEADER_TAKEOVER_SECONDS, description: 'several processes on one Postgres (`DATABASE_URL`): escalation, no-data checks, housekeeping and re-encryption run in one of them, through advisory locks; when it dies another takes them over within this ([Running several processes](operations.md#running-several-processes))' }),

  // Alerts and workers
  VIGIL_ALERT_RULES: Type.Optional(file({ section: 'Alerts and workers', defaultText: '`config/alert-rules.yaml` (shipped, next to `config/config.ts`)', description: 'alert rules file (YAML, see [Alert rules](alerts.md#alert-rules)); must be readable; watched and hot-reloaded' })),
  WORKER_THREADS: Type.Optional(integer(1, 256, { section: 'Alerts and workers', defaultText: 'CPU count', description: 'worker threads per pool: alert evaluation (a lane per thread, one lane per 250 readings of a batch, a patient in the same lane while that number holds; they start with the first batch too large for the event loop, all but one end after a minute idle), and the background jobs (transcriptions) one process runs at once' })),

  // Voice notes and jobs
  VOICE_NOTE_MAX_BYTES: integer(1024, 256 * MiB, { section: 'Voice notes and jobs', default: defaults.VOICE_NOTE_MAX_BYTES, defaultText: '`26214400` (25 MiB)', description: 'largest voice note upload (413 beyond; refused before it is read when Content-Length says so)' }),
  VOICE_NOTE_MAX_SECONDS: integer(1, 4 * 3600, { section: 'Voice notes and jobs', default: defaults.VOICE_NOTE_MAX_SECONDS, description: 'longest voice note (413 beyond)' }),
  TRANSCRIPTION_ENGINE: Type.Union([Type.Literal('pocketsphinx'), Type.Literal('pocketsphinx-generic'), Type.String({ pattern: '\\.(m?js|ts)$', file: true })], {
    section: 'Voice notes and jobs',
    default: defaults.TRANSCRIPTION_ENGINE,
    allowed: '"pocketsphinx", "pocketsphinx-generic" or the path of an engine module (.js, .mjs or .ts)',
    description: '`pocketsphinx` (Debian\'s `pocketsphinx` + `pocketsphinx-en-us`, with Vigil\'s clinical language model: [voice-notes.md](voice-notes.md)), `pocketsphinx-generic` (the stock US English model), or the path of an engine module (see [Engine](voice-notes.md#engine))'
  }),
  JOB_LEASE_SECONDS: integer(2, 3600, { section: 'Voice notes and jobs', default: defaults.JOB_LEASE_SECONDS, description: 'how long a job stays claimed without a heartbeat (one a second); a job whose process died is run again after this' }),
  JOB_MAX_ATTEMPTS: integer(1, 100, { section: 'Voice notes and jobs', default: defaults.JOB_MAX_ATTEMPTS, description: 'attempts before a job fails for good (retries wait 5 s, 10 s, 20 s … at most 10 min)' }),
  DEIDENTIFY_K_MIN: integer(2, 1000, { section: 'Voice notes and jobs', default: defaults.DEIDENTIFY_K_MIN, description: 'de-identified exports: a quasi-identifier cell (age group, sex) with fewer subjects than this is suppressed ([research-export.md](research-export.md))' }),
  DEIDENTIFY_EXPORT_TTL_HOURS: integer(1, 24 * 30, { section: 'Voice notes and jobs', default: defaults.DEIDENTIFY_EXPORT_TTL_HOURS, description: 'de-identified export files are deleted this long after the export finished' }),
  BULK_EXPORT_TTL_HOURS: integer(1, 24 * 30, { section: 'Voice notes and jobs', default: defaults.BULK_EXPORT_TTL_HOURS, description: 'FHIR bulk export (`$export`) files are served this long after the export finished, then deleted ([fhir.md](fhir.md#bulk-export))' }),

  // Security
  VIGIL_ADMIN_TOKEN: Type.Optional(text({ section: 'Security', secret: true, minLength: 24, allowed: 'at least 24 characters (use e.g. `openssl rand -hex 24`)', description: 'creates this admin API token at start if it does not exist' })),
  VIGIL_SECRET_KEY: Type.Optional(text({ section: 'Security', secret: true, description: 'PHI field-encryption keys: base64 of 32 bytes (`openssl rand -base64 32`), or `k2:<base64>,k1:<base64>,index:<base64>` (first key active; see [PHI at rest](security.md#phi-at-rest))' })),
  VIGIL_SECRET_KEY_FILE: Type.Optional(file({ section: 'Security', description: 'the same as a JSON file `{"activeKeyId", "keys", "blindIndexKey"}`; neither set: Vigil creates `VIGIL_DATA_DIR/secret-keys.json` and warns' })),

  // People and sessions
  VIGIL_ACCESS_TOKEN_TTL_SECONDS: integer(30, 86_400, { section: 'People and sessions', default: defaults.VIGIL_ACCESS_TOKEN_TTL_SECONDS, description: 'lifetime of a login\'s access token' }),
  VIGIL_SESSION_IDLE_SECONDS: integer(60, 7 * 86_400, { section: 'People and sessions', default: defaults.VIGIL_SESSION_IDLE_SECONDS, description: 'a login session unused this long is over: its access and refresh tokens stop working' }),
  VIGIL_SESSION_MAX_SECONDS: integer(300, 30 * 86_400, { section: 'People and sessions', default: defaults.VIGIL_SESSION_MAX_SECONDS, description: 'a session ends this long after login however it is used (at least `VIGIL_SESSION_IDLE_SECONDS`)' }),
  VIGIL_LOGIN_MAX_FAILURES: integer(1, 1000, { section: 'People and sessions', default: defaults.VIGIL_LOGIN_MAX_FAILURES, description: 'wrong passwords in a row that lock an account …' }),
  VIGIL_LOGIN_LOCKOUT_SECONDS: integer(1, 86_400, { section: 'People and sessions', default: defaults.VIGIL_LOGIN_LOCKOUT_SECONDS, description: '… for this long (an admin setting a new password also unlocks)' }),
  VIGIL_LOGIN_RATE_PER_ADDRESS: integer(1, 1_000_000, { section: 'People and sessions', default: defaults.VIGIL_LOGIN_RATE_PER_ADDRESS, description: 'login attempts a minute from one address (IPv6: a /64); more get 429 before any password is hashed' }),
  VIGIL_LOGIN_RATE_PER_ACCOUNT: integer(1, 1_000_000, { section: 'People and sessions', default: defaults.VIGIL_LOGIN_RATE_PER_ACCOUNT, description: 'login attempts a minute on one email, known or not; more get 429 before any password is hashed' }),
  VIGIL_PASSWORD_SCRYPT_LOG2_N: integer(14, 20, { section: 'People and sessions', default: defaults.VIGIL_PASSWORD_SCRYPT_LOG2_N, description: 'scrypt cost of new password hashes as log2 of N (r=8, p=1): 17 is OWASP\'s minimum (128 MiB and about 0.65 s a hash on 2 cores), each step doubles time and memory; below 17 start-up logs a warning (the tests use 14 to save CPU). A hash keeps the cost it was made with' }),
  VIGIL_BREAK_GLASS_MINUTES: integer(1, 24 * 60, { section: 'People and sessions', default: defaults.VIGIL_BREAK_GLASS_MINUTES, description: 'how long a break-glass grant opens a patient to a clinician' }),
  VIGIL_BREAK_GLASS_PER_HOUR: integer(1, 1000, { section: 'People and sessions', default: defaults.VIGIL_BREAK_GLASS_PER_HOUR, description: 'break-glass grants one clinician may take in any hour; more get 429 `VIGIL_ERR_BREAK_GLASS_LIMIT` (audited)' }),

  // Cluster
  REDIS_URL: Type.Optional(url(['redis:', 'rediss:'], { section: 'Cluster', secret: true, description: 'Redis (`redis://[:password@]host:6379[/db]`, `rediss://` for TLS): turns on clustering, several Vigil processes sharing one fleet (docs/operations.md): the broker\'s bus for alert notifications and session takeover, cache invalidation, alert events for every SSE stream. Needs `DATABASE_URL` (the shared PostgreSQL) and `VIGIL_SECRET_KEY` or `VIGIL_SECRET_KEY_FILE` (one PHI key for every process). Unset: one process, no Redis' })),
  REDIS_PREFIX: text({ section: 'Cluster', default: defaults.REDIS_PREFIX, pattern: '^[A-Za-z0-9_.:-]{1,64}$', allowed: '1 to 64 letters, digits and `_ . : -`', description: 'prefix of every Redis key and pub/sub channel Vigil uses; channels are server-wide (a database index in `REDIS_URL` separates keys only), so deployments sharing one Redis need different prefixes' }),

  // Logging
  LOG_LEVEL: Type.Union(logLevels.map((level) => Type.Literal(level)) as [TLiteral<typeof logLevels[number]>], { section: 'Logging', default: defaults.LOG_LEVEL, description: 'how much Vigil logs (pino levels)' })
})

/** The environment after validation: each variable typed, defaults applied (unset optional ones absent). */
export type Settings = Static<typeof configSchema>
export type VariableName = keyof typeof configSchema.properties

/** One variable's schema with Vigil's extra keywords. */
export type VariableSchema = TSchema & VariableDoc & {
  type?: string
  default?: unknown
  minimum?: number
  maximum?: number
  minLength?: number
  anyOf?: Array<{ const?: string, file?: true }>
}

export function variables (): Array<[VariableName, VariableSchema]> {
  return Object.entries(configSchema.properties) as unknown as Array<[VariableName, VariableSchema]>
}

/** What a variable accepts, in words: the end of "NAME must be …" and the docs' bounds. */
export function allowedText (schema: VariableSchema): string | null {
  if (schema.allowed !== undefined) return schema.allowed
  if (schema.type === 'integer') return `an integer between ${schema.minimum} and ${schema.maximum}`
  if (schema.anyOf !== undefined) return `one of ${schema.anyOf.map((s) => s.const).join(', ')}`
  if (schema.minLength !== undefined) return `at least ${schema.minLength} characters`
  return null
}
