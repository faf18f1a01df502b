import t from 'tap'
import fs from 'node:fs'
import { loadConfig, parseEnvironment } from '../../config/config.ts'
import type { ConfigError } from '../../config/config.ts'
import { defaults } from '../../config/schema/defaults.ts'
import { variables } from '../../config/schema/schema.ts'
import { accessDefaults } from '../../access/access.ts'
import { apiLimitDefaults } from '../../api/app.ts'
import { voiceNoteLimitDefaults } from '../../api/routes/voice-notes.ts'
import { DEFAULT_DISK_RESERVE_BYTES } from '../../store/disk-reserve.ts'
import { configurationDocPath, renderConfigurationDoc } from '../../scripts/config-docs.ts'

t.test('docs/configuration.md is what npm run docs:config writes from the schema', async (t) => {
  const onDisk = fs.readFileSync(configurationDocPath, 'utf8')
  t.equal(onDisk, renderConfigurationDoc(), 'docs/configuration.md and config/schema/schema.ts differ: run npm run docs:config')
})

t.test('the schema takes every default from the one defaults object, and the object holds nothing else', async (t) => {
  const names = new Set<string>()
  for (const [name, schema] of variables()) {
    names.add(name)
    t.ok(schema.description.length > 0 && schema.section.length > 0, `${name} has a section and a meaning`)
    if (schema.default !== undefined) t.equal(schema.default, (defaults as Record<string, unknown>)[name], `${name}'s default is defaults.${name}`)
    else t.notOk(name in defaults, `${name} has no fixed default`)
  }
  for (const name of Object.keys(defaults)) t.ok(names.has(name), `defaults.${name} is a variable of the schema`)
})

t.test('unset variables take the defaults object, and modules built without a Config agree with it', async (t) => {
  const settings = parseEnvironment({})
  for (const [name, value] of Object.entries(defaults)) t.equal((settings as Record<string, unknown>)[name], value, name)
  const c = loadConfig({})
  t.same({ rateLimitPerMinute: c.apiRateLimitPerMinute, unauthenticatedRateLimitPerMinute: c.apiUnauthenticatedRateLimitPerMinute, maxEventLoopDelayMs: c.apiMaxEventLoopDelayMs },
    { rateLimitPerMinute: apiLimitDefaults.rateLimitPerMinute, unauthenticatedRateLimitPerMinute: apiLimitDefaults.unauthenticatedRateLimitPerMinute, maxEventLoopDelayMs: apiLimitDefaults.maxEventLoopDelayMs }, 'buildApi')
  t.same({ maxBytes: c.voiceNoteMaxBytes, maxSeconds: c.voiceNoteMaxSeconds }, voiceNoteLimitDefaults, 'the voice-note route')
  t.same(c.access, accessDefaults, 'createAccess')
  t.equal(c.diskReserveBytes, DEFAULT_DISK_RESERVE_BYTES, 'the disk reserve')
})

function configError (env: Record<string, string>): ConfigError {
  try {
    loadConfig(env)
  } catch (err) {
    return err as ConfigError
  }
  throw new Error(`${JSON.stringify(env)} was accepted`)
}

t.test('errors name the variable and say what is allowed', async (t) => {
  t.equal(configError({ HTTP_PORT: 'abc' }).message, 'HTTP_PORT must be an integer between 0 and 65535 (got "abc")')
  t.equal(configError({ LOG_LEVEL: 'loud' }).message, 'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent (got "loud")')
  t.equal(configError({ TRANSCRIPTION_ENGINE: 'whisper' }).message,
    'TRANSCRIPTION_ENGINE must be "pocketsphinx", "pocketsphinx-generic" or the path of an engine module (.js, .mjs or .ts) (got "whisper")')
  t.equal(configError({ MQTT_MAX_PACKET_BYTES: '65536', MQTT_MAX_OUTGOING_BYTES: '65535' }).message,
    'MQTT_MAX_OUTGOING_BYTES must be at least MQTT_MAX_PACKET_BYTES (65536) (got "65535")')
})

t.test('a secret\'s bad value is never repeated in the error', async (t) => {
  const marker = 'Zq7SECRETzq7'
  const cases: Array<[Record<string, string>, string]> = [
    [{ VIGIL_ADMIN_TOKEN: `short-${marker}` }, 'VIGIL_ADMIN_TOKEN'],
    [{ DATABASE_URL: `mysql://vigil:${marker}@db/vigil` }, 'DATABASE_URL'],
    [{ DATABASE_URL: `${marker} not a url` }, 'DATABASE_URL'],
    [{ INFLUX_TOKEN: marker }, 'INFLUX_TOKEN'],
    [{ VIGIL_SECRET_KEY: marker }, 'VIGIL_SECRET_KEY'],
    [{ VIGIL_SECRET_KEY: `k1:${marker}` }, 'VIGIL_SECRET_KEY']
  ]
  for (const [env, variable] of cases) {
    const err = configError(env)
    t.equal(err.variable, variable, `${variable}: named`)
    t.notMatch(err.message, marker, `${variable}: the value is not in "${err.message}"`)
  }
  for (const [name, schema] of variables()) {
    if (['DATABASE_URL', 'INFLUX_TOKEN', 'VIGIL_ADMIN_TOKEN', 'VIGIL_SECRET_KEY'].includes(name)) t.equal(schema.secret, true, `${name} is marked secret`)
  }
})
