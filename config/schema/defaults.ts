/**
 * The one defaults object: every setting's default, keyed by its environment variable, in the
 * variable's unit. `config/schema/schema.ts` describes each variable (type, bounds, meaning)
 * with these defaults; `config/config.ts` applies them; modules that also run without a Config
 * (tests, `buildApi`, the job queue, the access store) import their defaults from here.
 *
 * This file imports nothing, so it sits on floor 0 and every room can read it (the job queue
 * and the store are on or below `config/`'s floor). Defaults that depend on the host or on
 * another variable (MQTT_HOST, MQTT_MAX_OUTGOING_BYTES, WORKER_THREADS, VIGIL_ALERT_RULES) are
 * computed in `config/config.ts` and described in the schema.
 */

const KiB = 1024
const MiB = 1024 * KiB

export const defaults = {
  // API
  HTTP_HOST: '127.0.0.1',
  HTTP_PORT: 3000,
  // 100 requests/s sustained per token: room for provisioning tools and dashboards, not for one runaway client.
  API_RATE_LIMIT_PER_MINUTE: 6000,
  // A person loading /docs makes about ten requests; a script guessing tokens or paths, thousands.
  API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE: 120,
  // The mean of the loop's 10 ms ticks over a 5 s sample: past 1 s the loop is stalled
  // nearly throughout (answers and the broker's PUBACKs are late). One long pause, such as
  // Fastify compiling its serializers at start-up (about a second), stays far below it;
  // with 1 s samples that pause alone shed the end-to-end tests' first requests.
  API_MAX_EVENT_LOOP_DELAY_MS: 1000,

  // MQTT
  MQTT_PORT: 1883,
  MQTT_PROXY_PROTOCOL: 'false',
  MQTT_MAX_PACKET_BYTES: 256 * KiB,
  // devices/{id}/telemetry and devices/{id}/# have 3 levels; Aedes caps the setting at 100.
  MQTT_MAX_TOPIC_LEVELS: 8,
  MQTT_KEEPALIVE_LIMIT_SECONDS: 1200,
  MQTT_CONNECT_TIMEOUT_SECONDS: 10,
  MQTT_MAX_INFLIGHT_QOS2: 100,
  MQTT_CONNECT_RATE_PER_ADDRESS: 600,
  MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: 10,
  MQTT_AUTH_FAILURE_WINDOW_SECONDS: 60,
  MQTT_LOCKOUT_SECONDS: 300,

  // Cluster
  REDIS_PREFIX: 'vigil:',

  // Storage
  INFLUX_TOKEN: '',
  INFLUX_ORG: 'vigil',
  INFLUX_BUCKET: 'vigil',
  INFLUX_API: 'auto',
  INFLUX_WRITE_GZIP: 'false',
  VIGIL_DATA_DIR: './data',
  VIGIL_SPOOL_MAX_BYTES: 1024 * MiB,
  // PGlite (like Postgres) writes its WAL in 16 MB segments: two of them (the one being filled
  // and the next, created ahead) plus room for the spool's records, rejections and audit rows
  // written while writes are refused (store/disk-reserve.ts).
  VIGIL_DISK_RESERVE_MB: 2 * 16 + 16,
  // A device clock a little behind the server's stamps its first readings before the
  // assignment made on the server (issue 12: 1.5 s).
  VIGIL_ASSIGNMENT_TOLERANCE_SECONDS: 300,
  // Several processes on one Postgres: a dead leader's escalations wait at most this (plus one
  // 15 s escalation tick). Locks are tried every third of it.
  VIGIL_LEADER_TAKEOVER_SECONDS: 15,

  // Voice notes and jobs
  VOICE_NOTE_MAX_BYTES: 25 * MiB,
  VOICE_NOTE_MAX_SECONDS: 600,
  TRANSCRIPTION_ENGINE: 'pocketsphinx',
  JOB_LEASE_SECONDS: 60,
  JOB_MAX_ATTEMPTS: 3,
  // De-identified exports (research/): k of the quasi-identifier check, and how long files live.
  DEIDENTIFY_K_MIN: 5,
  DEIDENTIFY_EXPORT_TTL_HOURS: 24,
  BULK_EXPORT_TTL_HOURS: 24,

  // People and sessions: short-lived access tokens (15 min) with a refresh path; a session idle
  // 30 min is over (HIPAA §164.312(a)(2)(iii) automatic logoff); 5 failures lock an account for 15 min.
  VIGIL_ACCESS_TOKEN_TTL_SECONDS: 900,
  VIGIL_SESSION_IDLE_SECONDS: 1800,
  VIGIL_SESSION_MAX_SECONDS: 12 * 3600,
  VIGIL_LOGIN_MAX_FAILURES: 5,
  VIGIL_LOGIN_LOCKOUT_SECONDS: 900,
  VIGIL_BREAK_GLASS_MINUTES: 60,
  VIGIL_BREAK_GLASS_PER_HOUR: 10,
  // Checked before the password is hashed (0.65 s of scrypt each): a flood costs no CPU.
  VIGIL_LOGIN_RATE_PER_ADDRESS: 20,
  VIGIL_LOGIN_RATE_PER_ACCOUNT: 10,
  VIGIL_PASSWORD_SCRYPT_LOG2_N: 17,

  // Logging
  LOG_LEVEL: 'info'
} as const

/**
 * Parts of the defaults computed in config/config.ts: MQTT_MAX_OUTGOING_BYTES defaults to the
 * larger of this and 4 × MQTT_MAX_PACKET_BYTES (room for several packets of the largest size).
 */
export const mqttMaxOutgoingBytesAtLeast = 1 * MiB
