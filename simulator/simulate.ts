import fs from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import mqtt from 'mqtt'
import { createVitalsModel } from './vitals-model.ts'

/*
 * npm run simulate -- --devices 20 --rate 1
 * Provisions (or reuses) patients and devices through the API, then publishes vitals from each
 * device over its own MQTT connection at QoS 1 with increasing seq, printing what it sends.
 */
// Ports of a Vigil started from this checkout (it writes them at start), else the defaults.
const dataDir = process.env.VIGIL_DATA_DIR ?? './data'
let listening: { httpPort?: number, mqttPort?: number } = {}
try {
  listening = JSON.parse(await fs.readFile(path.join(dataDir, 'listening.json'), 'utf8'))
} catch { /* not started from here */ }
// HTTP_PORT=0 (or MQTT_PORT=0) told Vigil to take any free port, which is not one to connect to:
// a shell that started Vigil that way and then runs this finds the real one in listening.json.
const setPort = (value: string | undefined): string | undefined => value === undefined || value === '' || value === '0' ? undefined : value
const httpPort = setPort(process.env.HTTP_PORT) ?? String(listening.httpPort ?? 3000)
const mqttPort = setPort(process.env.MQTT_PORT) ?? String(listening.mqttPort ?? 1883)

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '20' },
    rate: { type: 'string', default: '1' },
    duration: { type: 'string', default: '0' },
    api: { type: 'string', default: process.env.VIGIL_API_URL ?? `http://127.0.0.1:${httpPort}` },
    mqtt: { type: 'string', default: process.env.VIGIL_MQTT_URL ?? `mqtt://127.0.0.1:${mqttPort}` },
    token: { type: 'string', default: process.env.VIGIL_ADMIN_TOKEN ?? '' },
    state: { type: 'string', default: path.join(dataDir, 'simulator-devices.json') },
    quiet: { type: 'boolean', default: false },
    deteriorating: { type: 'string', default: '0' },
    help: { type: 'boolean', default: false }
  }
})

if (args.help) {
  process.stdout.write(`Usage: npm run simulate -- [options]
  --devices N     simulated devices, one patient each (default 20)
  --rate R        messages per second per device, each with 6 vitals (default 1)
  --duration S    stop after S seconds (default 0: until Ctrl-C)
  --api URL       Vigil API (default: the port in $VIGIL_DATA_DIR/listening.json, $HTTP_PORT, or 3000)
  --mqtt URL      Vigil MQTT (default: the port in $VIGIL_DATA_DIR/listening.json, $MQTT_PORT, or 1883)
  --token T       admin API token (default $VIGIL_ADMIN_TOKEN)
  --state FILE    where provisioned devices and their credentials are kept for reuse
  --quiet         print a summary every 5 s instead of every message
  --deteriorating N  the first N patients deteriorate over ~2 minutes (tachycardia, falling SpO2,
                  fever …), so alerts fire, escalate and show on the stream (default 0)
`)
  process.exit(0)
}

function positive (name: string, raw: string, allowZero = false): number {
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0 || (!allowZero && n === 0)) {
    process.stderr.write(`simulate: --${name} must be a ${allowZero ? 'non-negative' : 'positive'} number (got "${raw}")\n`)
    process.exit(2)
  }
  return n
}
const deviceCount = Math.floor(positive('devices', args.devices))
const rate = positive('rate', args.rate)
const duration = positive('duration', args.duration, true)
const deteriorating = Math.floor(positive('deteriorating', args.deteriorating, true))
if (args.token === '') {
  process.stderr.write('simulate: an admin API token is needed: set VIGIL_ADMIN_TOKEN (the same one Vigil started with) or pass --token\n')
  process.exit(2)
}

interface SimDevice { patientId: string, deviceId: string, password: string, seq: number }

async function api<T> (method: string, route: string, body?: unknown): Promise<T> {
  const res = await fetch(new URL(route, args.api), {
    method,
    headers: { authorization: `Bearer ${args.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${route} → ${res.status} ${text}`)
  return (text === '' ? undefined : JSON.parse(text)) as T
}

async function loadState (): Promise<SimDevice[]> {
  try {
    return JSON.parse(await fs.readFile(args.state, 'utf8')) as SimDevice[]
  } catch {
    return []
  }
}

async function provision (known: SimDevice[]): Promise<SimDevice[]> {
  const usable: SimDevice[] = []
  for (const d of known) {
    if (usable.length === deviceCount) break
    try {
      await api('GET', `/v1/devices/${d.deviceId}`)
      usable.push(d)
    } catch { /* device gone (new database): provision a fresh one */ }
  }
  while (usable.length < deviceCount) {
    const n = usable.length + 1
    const patient = await api<{ id: string }>('POST', '/v1/patients', { displayName: `Simulated patient ${n}` })
    const mac = Array.from({ length: 6 }, (_, i) => (i === 0 ? 0x02 : Math.floor(Math.random() * 256)).toString(16).padStart(2, '0')).join(':')
    const device = await api<{ id: string }>('POST', '/v1/devices', {
      name: `Simulated monitor ${n}`, mac, firmwareVersion: '1.0.0', softwareVersion: 'sim-1', startedAt: new Date().toISOString()
    })
    await api('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom: new Date(Date.now() - 60_000).toISOString() })
    const cred = await api<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
    usable.push({ patientId: patient.id, deviceId: device.id, password: cred.password, seq: 0 })
    process.stdout.write(`provisioned device ${device.id} for patient ${patient.id}\n`)
  }
  await fs.mkdir(path.dirname(args.state), { recursive: true })
  await fs.writeFile(args.state, JSON.stringify(usable, null, 2), { mode: 0o600 })
  return usable
}

const sims = await provision(await loadState())
process.stdout.write(`publishing from ${sims.length} devices at ${rate}/s each to ${args.mqtt}; patients' readings at ${args.api}/v1/patients/{id}/readings\n`)

let sent = 0
let acked = 0
let failed = 0
const clients: mqtt.MqttClient[] = []
const timers: NodeJS.Timeout[] = []
for (const [index, sim] of sims.entries()) {
  const client = mqtt.connect(args.mqtt, {
    clientId: sim.deviceId, username: sim.deviceId, password: sim.password, clean: true, reconnectPeriod: 2000, protocolVersion: 4
  })
  client.on('error', (err) => process.stderr.write(`device ${sim.deviceId}: ${err.message}\n`))
  clients.push(client)
  const model = createVitalsModel(Math.random, { deteriorating: index < deteriorating })
  const publish = (): void => {
    if (!client.connected) return
    sim.seq++
    const ts = Date.now()
    const message = { seq: sim.seq, readings: model.next().map((r) => ({ ...r, ts })) }
    sent++
    client.publish(`devices/${sim.deviceId}/telemetry`, JSON.stringify(message), { qos: 1 }, (err) => {
      if (err === undefined || err === null) acked++
      else failed++
    })
    if (!args.quiet) {
      process.stdout.write(`${new Date(ts).toISOString()} ${sim.deviceId} seq=${sim.seq} ${message.readings.map((r) => `${r.metric}=${r.value}`).join(' ')}\n`)
    }
  }
  // Spread devices over the period so the broker sees a steady stream, not bursts.
  const period = 1000 / rate
  timers.push(setTimeout(() => timers.push(setInterval(publish, period)), Math.random() * period))
}

const started = Date.now()
const summary = setInterval(() => {
  const s = (Date.now() - started) / 1000
  process.stdout.write(`[${s.toFixed(0)} s] messages sent ${sent}, acknowledged ${acked}, failed ${failed} (${(acked / s).toFixed(1)} acked/s)\n`)
}, 5000)

async function stop (): Promise<void> {
  for (const t of timers) clearInterval(t)
  clearInterval(summary)
  await Promise.all(clients.map((c) => c.endAsync()))
  await fs.writeFile(args.state, JSON.stringify(sims, null, 2), { mode: 0o600 })
  const s = (Date.now() - started) / 1000
  process.stdout.write(`done: ${sent} messages sent, ${acked} acknowledged, ${failed} failed in ${s.toFixed(1)} s (${(acked / s).toFixed(1)} messages/s, ${(6 * acked / s).toFixed(1)} readings/s)\n`)
  process.exit(0)
}
process.on('SIGINT', () => { void stop() })
if (duration > 0) setTimeout(() => { void stop() }, duration * 1000)
