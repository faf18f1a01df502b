import t from 'tap'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { ConfigError, defaultAlertRulesPath, loadConfig } from '../../config/config.ts'
import { createTestPki } from '../helpers/certificates.ts'

t.test('defaults are the embedded mode', async (t) => {
  const c = loadConfig({}, 4)
  t.equal(c.httpPort, 3000)
  t.equal(c.mqttPort, 1883)
  t.equal(c.databaseUrl, null)
  t.equal(c.influx, null)
  t.equal(c.dataDir, path.resolve('data'))
  t.equal(c.workerThreads, 4)
  t.equal(c.mqttMaxPacketBytes, 256 * 1024)
  t.equal(c.mqttMaxOutgoingBytes, 1024 * 1024)
  t.equal(c.mqttMaxTopicLevels, 8)
  t.equal(c.mqttKeepaliveLimitSeconds, 1200)
  t.equal(c.mqttConnectTimeoutSeconds, 10)
  t.equal(c.mqttMaxInflightQos2, 100)
  t.equal(c.mqttConnectRatePerAddress, 600)
  t.equal(c.mqttAuthFailuresBeforeLockout, 10)
  t.equal(c.mqttAuthFailureWindowSeconds, 60)
  t.equal(c.mqttLockoutSeconds, 300)
  t.equal(c.mqttTls, null)
  t.equal(c.mqttWsPort, null)
  t.equal(c.httpTls, null)
  t.equal(c.alertRulesPath, defaultAlertRulesPath)
  t.ok(defaultAlertRulesPath.endsWith(path.join('config', 'alert-rules.yaml')), 'the rules shipped in config/, whatever the working directory')
})

t.test('voice notes and jobs', async (t) => {
  const c = loadConfig({}, 4)
  t.equal(c.voiceNoteMaxBytes, 25 * 1024 * 1024)
  t.equal(c.voiceNoteMaxSeconds, 600)
  t.equal(c.transcriptionEngine, 'pocketsphinx')
  t.equal(c.jobLeaseSeconds, 60)
  t.equal(c.jobMaxAttempts, 3)
  const engine = path.resolve('jobs/transcription/engine.ts')
  t.equal(loadConfig({ TRANSCRIPTION_ENGINE: 'jobs/transcription/engine.ts' }).transcriptionEngine, engine, 'a module path, resolved')
})

t.test('the outgoing bound follows a larger packet size unless set', async (t) => {
  t.equal(loadConfig({ MQTT_MAX_PACKET_BYTES: String(1024 * 1024) }).mqttMaxOutgoingBytes, 4 * 1024 * 1024)
  t.equal(loadConfig({ MQTT_MAX_PACKET_BYTES: '4096', MQTT_MAX_OUTGOING_BYTES: '4096' }).mqttMaxOutgoingBytes, 4096)
})

t.test('load shedding: 1 s of mean event-loop delay by default, 0 turns it off', async (t) => {
  t.equal(loadConfig({}).apiMaxEventLoopDelayMs, 1000)
  t.equal(loadConfig({ API_MAX_EVENT_LOOP_DELAY_MS: '0' }).apiMaxEventLoopDelayMs, 0)
  t.equal(loadConfig({ API_MAX_EVENT_LOOP_DELAY_MS: '250' }).apiMaxEventLoopDelayMs, 250)
})

t.test('port 0 is allowed (pick a free port)', async (t) => {
  t.equal(loadConfig({ HTTP_PORT: '0', MQTT_PORT: '0' }).mqttPort, 0)
})

t.test('InfluxDB settings', async (t) => {
  const c = loadConfig({ INFLUX_URL: 'http://127.0.0.1:8086/', INFLUX_TOKEN: 'tok', INFLUX_BUCKET: 'b' })
  t.same(c.influx, { url: 'http://127.0.0.1:8086', token: 'tok', org: 'vigil', bucket: 'b', api: 'auto', gzipWrites: false })
  t.equal(loadConfig({ INFLUX_URL: 'http://127.0.0.1:8086', INFLUX_WRITE_GZIP: 'true' }).influx?.gzipWrites, true)
})

const bad: Array<[Record<string, string>, string]> = [
  [{ HTTP_PORT: 'abc' }, 'HTTP_PORT'],
  [{ HTTP_PORT: '70000' }, 'HTTP_PORT'],
  [{ API_MAX_EVENT_LOOP_DELAY_MS: '-1' }, 'API_MAX_EVENT_LOOP_DELAY_MS'],
  [{ API_MAX_EVENT_LOOP_DELAY_MS: 'off' }, 'API_MAX_EVENT_LOOP_DELAY_MS'],
  [{ MQTT_PORT: '-1' }, 'MQTT_PORT'],
  [{ MQTT_TLS_PORT: '1.5' }, 'MQTT_TLS_PORT'],
  [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
  // Each process of a cluster would create its own PHI key in its data directory and could not
  // read what the others wrote.
  [{ REDIS_URL: 'redis://127.0.0.1:6379', DATABASE_URL: 'postgres://postgres@127.0.0.1/vigil' }, 'VIGIL_SECRET_KEY'],
  [{ DATABASE_URL: 'not a url' }, 'DATABASE_URL'],
  [{ INFLUX_URL: 'ftp://x' }, 'INFLUX_URL'],
  [{ INFLUX_TOKEN: 'x' }, 'INFLUX_TOKEN'],
  [{ INFLUX_URL: 'http://x', INFLUX_API: 'v3' }, 'INFLUX_API'],
  [{ INFLUX_URL: 'http://x', INFLUX_WRITE_GZIP: 'yes' }, 'INFLUX_WRITE_GZIP'],
  [{ INFLUX_WRITE_GZIP: 'true' }, 'INFLUX_WRITE_GZIP'],
  [{ VIGIL_ADMIN_TOKEN: 'short' }, 'VIGIL_ADMIN_TOKEN'],
  [{ VIGIL_ACCESS_TOKEN_TTL_SECONDS: '10' }, 'VIGIL_ACCESS_TOKEN_TTL_SECONDS'],
  [{ VIGIL_SESSION_IDLE_SECONDS: 'soon' }, 'VIGIL_SESSION_IDLE_SECONDS'],
  [{ VIGIL_SESSION_IDLE_SECONDS: '7200', VIGIL_SESSION_MAX_SECONDS: '3600' }, 'VIGIL_SESSION_MAX_SECONDS'],
  [{ VIGIL_LOGIN_MAX_FAILURES: '0' }, 'VIGIL_LOGIN_MAX_FAILURES'],
  [{ VIGIL_LOGIN_LOCKOUT_SECONDS: '-5' }, 'VIGIL_LOGIN_LOCKOUT_SECONDS'],
  [{ VIGIL_BREAK_GLASS_MINUTES: '100000' }, 'VIGIL_BREAK_GLASS_MINUTES'],
  [{ VIGIL_BREAK_GLASS_PER_HOUR: '0' }, 'VIGIL_BREAK_GLASS_PER_HOUR'],
  [{ WORKER_THREADS: '0' }, 'WORKER_THREADS'],
  [{ VIGIL_PASSWORD_SCRYPT_LOG2_N: '13' }, 'VIGIL_PASSWORD_SCRYPT_LOG2_N'],
  [{ VIGIL_PASSWORD_SCRYPT_LOG2_N: '21' }, 'VIGIL_PASSWORD_SCRYPT_LOG2_N'],
  [{ VOICE_NOTE_MAX_BYTES: '10' }, 'VOICE_NOTE_MAX_BYTES'],
  [{ VOICE_NOTE_MAX_SECONDS: '0' }, 'VOICE_NOTE_MAX_SECONDS'],
  [{ TRANSCRIPTION_ENGINE: 'whisper' }, 'TRANSCRIPTION_ENGINE'],
  [{ TRANSCRIPTION_ENGINE: '/nonexistent/engine.js' }, 'TRANSCRIPTION_ENGINE'],
  [{ JOB_LEASE_SECONDS: '1' }, 'JOB_LEASE_SECONDS'],
  [{ JOB_MAX_ATTEMPTS: '0' }, 'JOB_MAX_ATTEMPTS'],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
  [{ MQTT_MAX_PACKET_BYTES: '10' }, 'MQTT_MAX_PACKET_BYTES'],
  [{ MQTT_MAX_OUTGOING_BYTES: '1000' }, 'MQTT_MAX_OUTGOING_BYTES'],
  [{ MQTT_MAX_PACKET_BYTES: '65536', MQTT_MAX_OUTGOING_BYTES: '65535' }, 'MQTT_MAX_OUTGOING_BYTES'],
  [{ MQTT_MAX_TOPIC_LEVELS: '2' }, 'MQTT_MAX_TOPIC_LEVELS'],
  [{ MQTT_MAX_TOPIC_LEVELS: '101' }, 'MQTT_MAX_TOPIC_LEVELS'],
  [{ MQTT_KEEPALIVE_LIMIT_SECONDS: '65536' }, 'MQTT_KEEPALIVE_LIMIT_SECONDS'],
  [{ MQTT_CONNECT_TIMEOUT_SECONDS: '0' }, 'MQTT_CONNECT_TIMEOUT_SECONDS'],
  [{ MQTT_CONNECT_TIMEOUT_SECONDS: '1.5' }, 'MQTT_CONNECT_TIMEOUT_SECONDS'],
  [{ MQTT_MAX_INFLIGHT_QOS2: '0' }, 'MQTT_MAX_INFLIGHT_QOS2'],
  [{ MQTT_CONNECT_RATE_PER_ADDRESS: '-1' }, 'MQTT_CONNECT_RATE_PER_ADDRESS'],
  [{ MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: 'ten' }, 'MQTT_AUTH_FAILURES_BEFORE_LOCKOUT'],
  [{ MQTT_AUTH_FAILURE_WINDOW_SECONDS: '0' }, 'MQTT_AUTH_FAILURE_WINDOW_SECONDS'],
  [{ MQTT_LOCKOUT_SECONDS: '0' }, 'MQTT_LOCKOUT_SECONDS'],
  [{ MQTT_WS_PORT: '65536' }, 'MQTT_WS_PORT'],
  [{ MQTT_TLS_PORT: '8883' }, 'MQTT_TLS_CERT_FILE'],
  [{ MQTT_TLS_CERT_FILE: '/etc/hostname' }, 'MQTT_TLS_CERT_FILE'],
  [{ MQTT_TLS_CA_FILE: '/etc/hostname' }, 'MQTT_TLS_CA_FILE'],
  [{ MQTT_TLS_PORT: '8883', MQTT_TLS_CERT_FILE: '/nonexistent/cert.pem', MQTT_TLS_KEY_FILE: '/nonexistent/key.pem' }, 'MQTT_TLS_CERT_FILE'],
  [{ MQTT_TLS_PORT: '8883', MQTT_TLS_CERT_FILE: '/etc', MQTT_TLS_KEY_FILE: '/etc' }, 'MQTT_TLS_CERT_FILE'],
  [{ HTTP_TLS_CERT_FILE: '/nonexistent/cert.pem' }, 'HTTP_TLS_CERT_FILE'],
  [{ VIGIL_SECRET_KEY: 'not base64!' }, 'VIGIL_SECRET_KEY'],
  [{ VIGIL_SECRET_KEY: Buffer.alloc(16, 1).toString('base64') }, 'VIGIL_SECRET_KEY'],
  [{ VIGIL_SECRET_KEY: `k2:${Buffer.alloc(32, 2).toString('base64')},k1:${Buffer.alloc(32, 1).toString('base64')}` }, 'VIGIL_SECRET_KEY'],
  [{ VIGIL_SECRET_KEY: Buffer.alloc(32, 1).toString('base64'), VIGIL_SECRET_KEY_FILE: '/etc/hostname' }, 'VIGIL_SECRET_KEY'],
  [{ VIGIL_SECRET_KEY_FILE: '/nonexistent/keys.json' }, 'VIGIL_SECRET_KEY_FILE'],
  [{ VIGIL_SECRET_KEY_FILE: '/etc/hostname' }, 'VIGIL_SECRET_KEY_FILE'],
  [{ VIGIL_ALERT_RULES: '/nonexistent/rules.yaml' }, 'VIGIL_ALERT_RULES'],
  [{ VIGIL_ALERT_RULES: '/etc' }, 'VIGIL_ALERT_RULES']
]
for (const [env, variable] of bad) {
  t.test(`${JSON.stringify(env)} names ${variable}`, async (t) => {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, 'a ConfigError')
    t.equal((err as ConfigError).variable, variable)
    t.match((err as ConfigError).message, new RegExp(`^${variable} `), 'the message starts with the variable')
  })
}

t.test('field-encryption keys: unset is the embedded default; the variable or the file give a keyring', async (t) => {
  t.equal(loadConfig({}).secretKeys, null)
  const key = Buffer.alloc(32, 7).toString('base64')
  const fromEnv = loadConfig({ VIGIL_SECRET_KEY: key }).secretKeys
  t.equal(fromEnv?.source, 'VIGIL_SECRET_KEY')
  t.equal(fromEnv?.keyring.activeKeyId, 'k1')
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-config-keys-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'keys.json')
  await fs.writeFile(file, JSON.stringify({ activeKeyId: 'b', keys: { a: key, b: Buffer.alloc(32, 8).toString('base64') }, blindIndexKey: key }))
  const fromFile = loadConfig({ VIGIL_SECRET_KEY_FILE: file }).secretKeys
  t.equal(fromFile?.source, 'VIGIL_SECRET_KEY_FILE')
  t.equal(fromFile?.keyring.activeKeyId, 'b')
  t.notMatch(JSON.stringify(loadConfig({ VIGIL_SECRET_KEY: key })), key, 'the config serializes without key material')
})

t.test('TLS files are read and checked at start', async (t) => {
  const pki = await createTestPki()
  t.teardown(() => pki.remove())
  const other = await pki.client('someone')
  const junk = path.join(pki.dir, 'junk.pem')
  await fs.writeFile(junk, 'not a certificate\n')
  const server = { MQTT_TLS_CERT_FILE: pki.server.certFile, MQTT_TLS_KEY_FILE: pki.server.keyFile }

  const c = loadConfig({ MQTT_TLS_PORT: '0', ...server, MQTT_TLS_CA_FILE: pki.ca.certFile, MQTT_WS_PORT: '0', HTTP_TLS_CERT_FILE: pki.server.certFile, HTTP_TLS_KEY_FILE: pki.server.keyFile })
  t.same(c.mqttTls, { port: 0, certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile })
  t.equal(c.mqttWsPort, 0)
  t.same(c.httpTls, { certFile: pki.server.certFile, keyFile: pki.server.keyFile })

  const cases: Array<[string, Record<string, string>, string]> = [
    ['certificate and key without a port', { ...server }, 'MQTT_TLS_CERT_FILE'],
    ['a port and a certificate without a key', { MQTT_TLS_PORT: '0', MQTT_TLS_CERT_FILE: pki.server.certFile }, 'MQTT_TLS_KEY_FILE'],
    ['a port and a key without a certificate', { MQTT_TLS_PORT: '0', MQTT_TLS_KEY_FILE: pki.server.keyFile }, 'MQTT_TLS_CERT_FILE'],
    ['a key that is not the certificate\'s', { MQTT_TLS_PORT: '0', ...server, MQTT_TLS_KEY_FILE: other.keyFile }, 'MQTT_TLS_KEY_FILE'],
    ['a certificate file that holds no certificate', { MQTT_TLS_PORT: '0', ...server, MQTT_TLS_CERT_FILE: junk }, 'MQTT_TLS_CERT_FILE'],
    ['a key file that holds no key', { MQTT_TLS_PORT: '0', ...server, MQTT_TLS_KEY_FILE: junk }, 'MQTT_TLS_KEY_FILE'],
    ['a CA file that holds no certificate', { MQTT_TLS_PORT: '0', ...server, MQTT_TLS_CA_FILE: junk }, 'MQTT_TLS_CA_FILE'],
    ['a CA file that does not exist', { MQTT_TLS_PORT: '0', ...server, MQTT_TLS_CA_FILE: path.join(pki.dir, 'missing.pem') }, 'MQTT_TLS_CA_FILE'],
    ['an HTTPS certificate without its key', { HTTP_TLS_CERT_FILE: pki.server.certFile }, 'HTTP_TLS_KEY_FILE'],
    ['an HTTPS key without its certificate', { HTTP_TLS_KEY_FILE: pki.server.keyFile }, 'HTTP_TLS_CERT_FILE'],
    ['an HTTPS key that is not the certificate\'s', { HTTP_TLS_CERT_FILE: pki.server.certFile, HTTP_TLS_KEY_FILE: other.keyFile }, 'HTTP_TLS_KEY_FILE']
  ]
  for (const [name, env, variable] of cases) {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, `${name}: a ConfigError`)
    t.equal((err as ConfigError).variable, variable, `${name}: names ${variable}`)
    t.match((err as ConfigError).message, new RegExp(`^${variable} `), `${name}: the message starts with the variable`)
  }
})

t.test('access settings: defaults and overrides', async (t) => {
  t.same(loadConfig({}).access, {
    accessTokenTtlSeconds: 900, sessionIdleSeconds: 1800, sessionMaxSeconds: 43200, loginMaxFailures: 5, loginLockoutSeconds: 900, breakGlassMinutes: 60,
    breakGlassGrantsPerHour: 10, loginsPerAddressPerMinute: 20, loginsPerAccountPerMinute: 10
  })
  t.equal(loadConfig({}).passwordScryptLog2N, 17, 'OWASP\'s scrypt minimum by default')
  t.equal(loadConfig({ VIGIL_PASSWORD_SCRYPT_LOG2_N: '14' }).passwordScryptLog2N, 14)
  const c = loadConfig({
    VIGIL_ACCESS_TOKEN_TTL_SECONDS: '300', VIGIL_LOGIN_MAX_FAILURES: '3', VIGIL_BREAK_GLASS_MINUTES: '15', VIGIL_BREAK_GLASS_PER_HOUR: '4',
    VIGIL_LOGIN_RATE_PER_ADDRESS: '50', VIGIL_LOGIN_RATE_PER_ACCOUNT: '4'
  })
  t.match(c.access, { accessTokenTtlSeconds: 300, loginMaxFailures: 3, breakGlassMinutes: 15, breakGlassGrantsPerHour: 4, loginsPerAddressPerMinute: 50, loginsPerAccountPerMinute: 4 })
  t.throws(() => loadConfig({ VIGIL_LOGIN_RATE_PER_ADDRESS: '0' }), /VIGIL_LOGIN_RATE_PER_ADDRESS/)
})
