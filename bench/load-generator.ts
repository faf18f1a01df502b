import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import type { DeviceCredential, GeneratorCommand, GeneratorReport, RunResult } from './generator-protocol.ts'
import { LatencyHistogram } from './latency-histogram.ts'

/*
 * The load generator: a child process of bench/run.ts (fork, IPC) that simulates devices with
 * raw MQTT 3.1.1 over one TCP socket each, using mqtt-packet's generator and parser and no
 * client library, so that thousands of devices cost little CPU. One timer drives every device:
 * each tick sends what the schedule says is due, round-robin over the devices, so the total rate
 * is exact and each device publishes at the same steady interval. It measures publish → PUBACK
 * latency and its own CPU, and reports to the parent over IPC.
 */

interface Device {
  readonly id: string
  readonly password: string
  readonly topic: string
  socket: net.Socket | null
  connected: boolean
  seq: number
  lastTs: number
  nextMessageId: number
  lastSentAt: number
  /** messageId → performance.now() at publish. */
  readonly pending: Map<number, number>
}

const tickMs = 2
/** Falling further behind the schedule than this (a descheduled or saturated generator) skips messages rather than bursting them. */
const maxLagMs = 250
const keepaliveSeconds = 60
const pingreq = mqttPacket.generate({ cmd: 'pingreq' })
const disconnectPacket = mqttPacket.generate({ cmd: 'disconnect' })

let devices: Device[] = []
/** The run in progress, if any. */
let current: ActiveRun | null = null

interface ActiveRun {
  ackedInWindow: number
  acked: number
  lost: number
  windowOpen: boolean
  latency: LatencyHistogram
  sampleEvery: number
  /** key `${deviceIndex}:${messageId}` of sampled messages awaiting PUBACK. */
  samples: Map<string, { seq: number, ts: number, publishedAt: number }>
  sentTotal: number
  readingsPerMessage: number
}

function send (report: GeneratorReport): void {
  process.send?.(report)
}

function heartRate (seq: number): number {
  // Plausible and varying, so InfluxDB stores ordinary floats rather than one repeated value.
  return 60 + ((seq * 7) % 40)
}

function publish (device: Device, index: number, run: ActiveRun): void {
  const socket = device.socket
  if (socket === null || !device.connected) return
  device.seq++
  // Strictly increasing per device: two readings of one device with equal timestamps would be
  // one point in InfluxDB (same series and time), which would look like a lost reading.
  const ts = Math.max(Date.now(), device.lastTs + 1)
  const n = run.readingsPerMessage
  device.lastTs = ts + n - 1
  const messageId = device.nextMessageId
  device.nextMessageId = messageId === 65535 ? 1 : messageId + 1
  // More than one reading: consecutive milliseconds (a backlog upload, or a monitor's readings
  // of one round), each its own point in InfluxDB.
  let readings = `{"metric":"heart_rate","value":${heartRate(device.seq)},"unit":"/min","ts":${ts}}`
  for (let i = 1; i < n; i++) readings += `,{"metric":"heart_rate","value":${heartRate(device.seq + i)},"unit":"/min","ts":${ts + i}}`
  const payload = `{"seq":${device.seq},"readings":[${readings}]}`
  const packet = mqttPacket.generate({ cmd: 'publish', topic: device.topic, payload, qos: 1, messageId, retain: false, dup: false })
  const now = performance.now()
  device.pending.set(messageId, now)
  device.lastSentAt = now
  run.sentTotal++
  if (run.sampleEvery > 0 && run.sentTotal % run.sampleEvery === 0) {
    run.samples.set(`${index}:${messageId}`, { seq: device.seq, ts, publishedAt: performance.timeOrigin + now })
  }
  socket.write(packet)
}

function onPuback (device: Device, index: number, messageId: number): void {
  const sentAt = device.pending.get(messageId)
  if (sentAt === undefined) return // from a run already closed
  device.pending.delete(messageId)
  const run = current
  if (run === null) return
  run.latency.recordMs(performance.now() - sentAt)
  run.acked++
  if (run.windowOpen) run.ackedInWindow++
  if (run.samples.size > 0) {
    const key = `${index}:${messageId}`
    const sample = run.samples.get(key)
    if (sample !== undefined) {
      run.samples.delete(key)
      send({ type: 'sample', deviceId: device.id, ...sample })
    }
  }
}

let disconnects = 0

function connectDevice (device: Device, index: number, host: string, port: number): Promise<'connected' | 'refused' | string> {
  return new Promise((resolve) => {
    let settled = false
    const settle = (outcome: 'connected' | 'refused' | string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(outcome)
    }
    const timer = setTimeout(() => {
      socket.destroy()
      settle('CONNACK timeout (30 s)')
    }, 30_000)
    const socket = net.connect({ host, port })
    socket.setNoDelay(true)
    const parser = mqttPacket.parser({ protocolVersion: 4 })
    parser.on('packet', (packet) => {
      if (packet.cmd === 'puback') {
        onPuback(device, index, packet.messageId!)
      } else if (packet.cmd === 'connack') {
        if (packet.returnCode === 0) {
          device.connected = true
          settle('connected')
        } else {
          socket.destroy()
          settle('refused')
        }
      }
    })
    parser.on('error', (err) => {
      socket.destroy()
      settle(`protocol error: ${err.message}`)
    })
    socket.on('data', (chunk) => parser.parse(chunk))
    socket.on('connect', () => {
      socket.write(mqttPacket.generate({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        clientId: device.id,
        keepalive: keepaliveSeconds,
        username: device.id,
        password: Buffer.from(device.password)
      }))
    })
    socket.on('error', (err) => settle((err as NodeJS.ErrnoException).code ?? err.message))
    socket.on('close', () => {
      if (device.connected) disconnects++
      device.connected = false
      device.socket = null
      if (current !== null) current.lost += device.pending.size
      device.pending.clear()
      settle('closed before CONNACK')
    })
    device.socket = socket
  })
}

async function connectAll (credentials: DeviceCredential[], host: string, port: number, concurrency: number): Promise<void> {
  const started = performance.now()
  devices = credentials.map((c) => ({
    id: c.deviceId,
    password: c.password,
    topic: `devices/${c.deviceId}/telemetry`,
    socket: null,
    connected: false,
    seq: 0,
    lastTs: 0,
    nextMessageId: 1,
    lastSentAt: performance.now(),
    pending: new Map()
  }))
  let connected = 0
  let refused = 0
  let failed = 0
  let firstError: string | null = null
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < devices.length) {
      const index = next++
      const outcome = await connectDevice(devices[index]!, index, host, credentials[index]!.port ?? port)
      if (outcome === 'connected') connected++
      else if (outcome === 'refused') refused++
      else {
        failed++
        firstError ??= outcome
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker))
  send({ type: 'connected', connected, refused, failed, firstError, elapsedMs: performance.now() - started })
}

function disconnectAll (): Promise<void> {
  const closing = devices.filter((d) => d.socket !== null).map((d) => new Promise<void>((resolve) => {
    const socket = d.socket!
    d.connected = false
    socket.once('close', () => resolve())
    socket.end(disconnectPacket)
    setTimeout(() => socket.destroy(), 2000).unref()
  }))
  return Promise.all(closing).then(() => { devices = [] })
}

// Keeps idle devices' sessions alive between steps (MQTT-3.1.2-24: the server closes a
// connection silent for 1.5 × keepalive).
setInterval(() => {
  const now = performance.now()
  for (const d of devices) {
    if (d.connected && d.socket !== null && now - d.lastSentAt > keepaliveSeconds * 500) {
      d.lastSentAt = now
      d.socket.write(pingreq)
    }
  }
}, 5000).unref()

async function runLoad (ratePerSecond: number, durationMs: number, drainMs: number, sampleEvery: number, readingsPerMessage: number): Promise<RunResult> {
  const live = devices.map((d, i) => ({ d, i })).filter(({ d }) => d.connected)
  const run: ActiveRun = {
    ackedInWindow: 0, acked: 0, lost: 0, windowOpen: true, latency: new LatencyHistogram(), sampleEvery, samples: new Map(), sentTotal: 0, readingsPerMessage
  }
  current = run
  const disconnectsBefore = disconnects
  const cpuBefore = process.cpuUsage()
  const started = performance.now()
  let due = 0
  let sent = 0
  let behind = 0
  let firstTs = 0
  let cursor = 0
  const maxBurst = Math.max(1, Math.ceil(ratePerSecond * maxLagMs / 1000))

  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const elapsed = Math.min(performance.now() - started, durationMs)
      const target = Math.floor(ratePerSecond * elapsed / 1000)
      let n = target - due
      due = target
      if (n > maxBurst) {
        behind += n - maxBurst
        n = maxBurst
      }
      for (let k = 0; k < n && live.length > 0; k++) {
        let tries = 0
        // Skip devices whose connection dropped (counted as lost/disconnects, not sent).
        while (!live[cursor]!.d.connected && tries < live.length) {
          cursor = (cursor + 1) % live.length
          tries++
        }
        const { d, i } = live[cursor]!
        cursor = (cursor + 1) % live.length
        if (!d.connected) break
        publish(d, i, run)
        if (sent === 0) firstTs = d.lastTs - (readingsPerMessage - 1)
        sent++
      }
      if (elapsed >= durationMs) {
        clearInterval(timer)
        resolve()
      }
    }
    const timer = setInterval(tick, tickMs)
  })
  run.windowOpen = false
  const cpu = process.cpuUsage(cpuBefore)
  const windowMs = performance.now() - started
  const lastTs = live.reduce((max, { d }) => Math.max(max, d.lastTs), 0)

  const drainEnd = performance.now() + drainMs
  const outstanding = (): number => live.reduce((n, { d }) => n + d.pending.size, 0)
  while (outstanding() > 0 && performance.now() < drainEnd) await new Promise((resolve) => setTimeout(resolve, 10))
  const unacked = outstanding()
  for (const { d } of live) d.pending.clear()
  current = null
  return {
    type: 'ran',
    offered: due,
    sent,
    behind,
    ackedInWindow: run.ackedInWindow,
    acked: run.acked,
    lost: run.lost,
    unacked,
    disconnects: disconnects - disconnectsBefore,
    firstTs,
    lastTs,
    windowMs,
    cpuFraction: (cpu.user + cpu.system) / 1000 / windowMs,
    latency: run.latency.toSparse()
  }
}

process.on('message', (command: GeneratorCommand) => {
  const handle = async (): Promise<void> => {
    switch (command.type) {
      case 'connect':
        await connectAll(command.devices, command.host, command.port, command.concurrency)
        break
      case 'run':
        send(await runLoad(command.ratePerSecond, command.durationMs, command.drainMs, command.sampleEvery, command.readingsPerMessage))
        break
      case 'disconnect':
        await disconnectAll()
        send({ type: 'disconnected' })
        break
    }
  }
  handle().catch((err: unknown) => send({ type: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) }))
})
// The parent is gone (crash, Ctrl-C): leave nothing behind.
process.on('disconnect', () => process.exit(0))
send({ type: 'ready' })
