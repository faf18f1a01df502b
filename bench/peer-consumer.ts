import { InfluxDB, Point } from '@influxdata/influxdb-client'
import mqtt from 'mqtt'

/*
 * The peer pipeline's consumer: what a team would assemble instead of Vigil — Mosquitto plus a
 * small Node service that subscribes to every device's telemetry and writes it to InfluxDB
 * with the official client. Deliberately minimal, as such consumers are: no auth of devices, no
 * validation beyond JSON.parse, no patient lookup, and no durability (Mosquitto PUBACKs on
 * receipt; the client's WriteApi buffers in memory and retries from memory).
 *
 * Debian's influxd 1.6.7 has no /api/v2/write. The client has no v1 mode, but its WriteApi's
 * `path` is public and documented as changeable, so the same batching WriteApi posts to the v1
 * endpoint `/write?db=…&precision=ms` instead (influxd 1.6 accepts the same line protocol).
 *
 * Usage (forked by bench/run.ts): peer-consumer.ts <mqtt url> <influx url> <database>
 */
const [mqttUrl, influxUrl, database] = process.argv.slice(2)
if (mqttUrl === undefined || influxUrl === undefined || database === undefined) {
  process.stderr.write('usage: peer-consumer.ts <mqtt url> <influx url> <database>\n')
  process.exit(2)
}

let received = 0
let written = 0
let writeFailures = 0
let malformed = 0

const writeApi = new InfluxDB({ url: influxUrl }).getWriteApi('', database, 'ms', {
  // Batches as large as Vigil's spool delivery, flushed at least every 100 ms.
  batchSize: 5000,
  flushInterval: 100,
  writeSuccess (lines) { written += lines.length },
  writeFailed (_err, lines) { writeFailures += lines.length }
})
writeApi.path = `/write?${new URLSearchParams({ db: database, precision: 'ms' }).toString()}`

interface Telemetry { seq?: number, readings: Array<{ metric: string, value: number, unit: string, ts: number }> }

const client = mqtt.connect(mqttUrl, { clientId: `peer-consumer-${process.pid}`, clean: true, protocolVersion: 4, reconnectPeriod: 1000 })
client.on('error', (err) => process.stderr.write(`peer-consumer: ${err.message}\n`))
client.on('message', (topic, payload) => {
  received++
  const deviceId = topic.split('/')[1] ?? ''
  let message: Telemetry
  try {
    message = JSON.parse(payload.toString('utf8')) as Telemetry
  } catch {
    malformed++
    return
  }
  for (const r of message.readings) {
    const point = new Point('reading')
      .tag('device_id', deviceId)
      .tag('metric', r.metric)
      .floatField('value', r.value)
      .stringField('unit', r.unit)
      .timestamp(r.ts)
    if (message.seq !== undefined) point.intField('seq', message.seq)
    writeApi.writePoint(point)
  }
})
client.on('connect', () => {
  client.subscribe('devices/+/telemetry', { qos: 1 }, (err) => {
    if (err !== null && err !== undefined) process.stderr.write(`peer-consumer: subscribe failed: ${err.message}\n`)
    else process.send?.({ type: 'ready' })
  })
})

process.on('message', (command: { type: string }) => {
  if (command.type === 'stats') process.send?.({ type: 'stats', received, written, writeFailures, malformed })
})

async function stop (): Promise<void> {
  await client.endAsync().catch(() => {})
  await writeApi.close().catch(() => {})
  process.exit(0)
}
process.on('SIGTERM', () => { void stop() })
process.on('disconnect', () => { void stop() })
