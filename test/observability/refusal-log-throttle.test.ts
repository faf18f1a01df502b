import mqtt from 'mqtt'
import t from 'tap'
import { createLogger } from '../../observability/logger.ts'
import { createLogThrottle } from '../../observability/log-throttle.ts'
import { startInfluxd } from '../helpers/influxd.ts'
import { createLogCapture, startVigilWithLogCapture } from '../helpers/log-capture.ts'

// Issue 12 item 6: during a disk-full episode every refused publish logged an error with a full
// stack trace (12,148 lines in two minutes, onto the full disk). One cause, one line per
// interval, with a count.
const refusedMsg = 'reading not made durable: closing connection without PUBACK'

t.test('the throttle: one line per key per interval, the rest counted, nothing lost at close', async (t) => {
  const logs = createLogCapture()
  const throttle = createLogThrottle(createLogger('info', logs.stream), 60_000)
  for (let i = 0; i < 50; i++) throttle.log('error', 'spool_full', { reason: 'spool_full', i }, 'refused')
  throttle.log('warn', 'store_unavailable', { reason: 'store_unavailable' }, 'refused')
  t.equal(logs.lines.length, 2, 'one line per key so far')
  throttle.close()
  t.equal(logs.lines.length, 3, 'close reports what was held back')
  t.match(logs.lines[2], { reason: 'spool_full', i: 49, repeated: 49, msg: 'refused (repeated)', level: 50 })
})

t.test('a full spool refusing publish after publish logs one line per reason per interval, without stacks', async (t) => {
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  const vigil = await startVigilWithLogCapture({ env: { INFLUX_URL: influxd.url, INFLUX_BUCKET: 'throttle', VIGIL_SPOOL_MAX_BYTES: String(64 * 1024) } })
  let open = true
  t.teardown(async () => { if (open) await vigil.close() })
  const device = await vigil.provision()
  await influxd.stop()

  const target = 40
  let refused = 0
  const payload = JSON.stringify({ seq: 1, readings: Array.from({ length: 200 }, (_, i) => ({ metric: 'heart_rate', value: 70, unit: '/min', ts: Date.now() - 600_000 + i })) })
  for (let attempt = 0; attempt < 2000 && refused < target; attempt++) {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, {
      clientId: device.deviceId, username: device.deviceId, password: device.password, reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000
    })
    const closed = new Promise<'refused'>((resolve) => client.once('close', () => resolve('refused')))
    const outcome = await Promise.race([client.publishAsync(`devices/${device.deviceId}/telemetry`, payload, { qos: 1 }).then(() => 'acked', () => 'refused'), closed])
    if (outcome === 'refused') refused++
    client.end(true)
  }
  t.equal(refused, target, `${target} publishes refused (spool full)`)
  const lines = vigil.logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith(refusedMsg))
  t.ok(lines.length >= 1 && lines.length <= target / 4, `${lines.length} log lines for ${target} refusals`)
  t.notOk(lines.some((l) => JSON.stringify(l).includes('"stack"')), 'no stack traces')
  t.match(lines[0], { reason: 'spool_full', error: /spool is full/ })
  open = false
  await vigil.close()
  const all = vigil.logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith(refusedMsg))
  const counted = all.reduce((n, l) => n + 1 + (typeof l.repeated === 'number' ? l.repeated : 0) - (l.msg === refusedMsg ? 0 : 1), 0)
  t.equal(counted, target, 'every refusal counted in the lines (first line + repeated)')
})
