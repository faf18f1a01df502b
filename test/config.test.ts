import t from 'tap'
import path from 'node:path'
import { ConfigError, loadConfig } from '../config/config.ts'

t.test('defaults are the embedded mode', async (t) => {
  const c = loadConfig({}, 4)
  t.equal(c.httpPort, 3000)
  t.equal(c.mqttPort, 1883)
  t.equal(c.databaseUrl, null)
  t.equal(c.influx, null)
  t.equal(c.dataDir, path.resolve('data'))
  t.equal(c.workerThreads, 4)
  t.equal(c.mqttMaxPacketBytes, 256 * 1024)
})

t.test('port 0 is allowed (pick a free port)', async (t) => {
  t.equal(loadConfig({ HTTP_PORT: '0', MQTT_PORT: '0' }).mqttPort, 0)
})

t.test('InfluxDB settings', async (t) => {
  const c = loadConfig({ INFLUX_URL: 'http://127.0.0.1:8086/', INFLUX_TOKEN: 'tok', INFLUX_BUCKET: 'b' })
  t.same(c.influx, { url: 'http://127.0.0.1:8086', token: 'tok', org: 'vigil', bucket: 'b', api: 'auto' })
})

const bad: Array<[Record<string, string>, string]> = [
  [{ HTTP_PORT: 'abc' }, 'HTTP_PORT'],
  [{ HTTP_PORT: '70000' }, 'HTTP_PORT'],
  [{ MQTT_PORT: '-1' }, 'MQTT_PORT'],
  [{ MQTT_TLS_PORT: '1.5' }, 'MQTT_TLS_PORT'],
  [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
  [{ DATABASE_URL: 'not a url' }, 'DATABASE_URL'],
  [{ INFLUX_URL: 'ftp://x' }, 'INFLUX_URL'],
  [{ INFLUX_TOKEN: 'x' }, 'INFLUX_TOKEN'],
  [{ INFLUX_URL: 'http://x', INFLUX_API: 'v3' }, 'INFLUX_API'],
  [{ VIGIL_ADMIN_TOKEN: 'short' }, 'VIGIL_ADMIN_TOKEN'],
  [{ WORKER_THREADS: '0' }, 'WORKER_THREADS'],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
  [{ MQTT_MAX_PACKET_BYTES: '10' }, 'MQTT_MAX_PACKET_BYTES']
]
for (const [env, variable] of bad) {
  t.test(`${JSON.stringify(env)} names ${variable}`, async (t) => {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, 'a ConfigError')
    t.equal((err as ConfigError).variable, variable)
    t.match((err as ConfigError).message, new RegExp(`^${variable} `), 'the message starts with the variable')
  })
}
