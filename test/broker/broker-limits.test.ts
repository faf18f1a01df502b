import { spawn } from 'node:child_process'
import fs from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { addressKey, createAddressGuard } from '../../broker/address-guard.ts'
import { reasonOfAedesError } from '../../broker/refusal-reasons.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { remainingLength } from '../helpers/fuzz.ts'

// Every limit here is small so each test trips it quickly. Tests that must not share an
// address's allowance or lockout connect from their own loopback address (Linux routes all of
// 127.0.0.0/8 to lo), which the broker sees as the remote address.
const vigil = await startTestVigil({
  MQTT_MAX_PACKET_BYTES: '16384',
  MQTT_MAX_OUTGOING_BYTES: '65536',
  MQTT_MAX_TOPIC_LEVELS: '5',
  MQTT_KEEPALIVE_LIMIT_SECONDS: '60',
  MQTT_CONNECT_TIMEOUT_SECONDS: '1',
  MQTT_MAX_INFLIGHT_QOS2: '5',
  MQTT_CONNECT_RATE_PER_ADDRESS: '20',
  MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: '3',
  MQTT_LOCKOUT_SECONDS: '2'
})
t.teardown(() => vigil.close())
const device = await vigil.provision()

let addresses = 0
/** A loopback address no other test uses. */
function freshAddress (): string {
  addresses++
  return `127.10.${Math.floor(addresses / 250)}.${(addresses % 250) + 1}`
}

type Packet = mqttPacket.Packet

/** A bare MQTT client: sends exactly the bytes a test wants and reports what comes back. */
interface RawClient {
  socket: net.Socket
  send (packet: Packet | Buffer): void
  /** The next packet, 'closed' once the broker closed the connection, or 'timeout'. */
  next (timeoutMs?: number): Promise<Packet | 'closed' | 'timeout'>
  closed: Promise<void>
}

async function openRaw (localAddress = freshAddress()): Promise<RawClient> {
  const socket = net.connect({ port: vigil.mqttPort, host: '127.0.0.1', localAddress })
  socket.on('error', () => {})
  t.teardown(() => { socket.destroy() })
  await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('close', reject) })
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const queue: Packet[] = []
  let wake: (() => void) | null = null
  let isClosed = false
  parser.on('packet', (p) => { queue.push(p); wake?.() })
  socket.on('data', (d: Buffer) => parser.parse(d))
  const closed = new Promise<void>((resolve) => socket.once('close', () => { isClosed = true; wake?.(); resolve() }))
  return {
    socket,
    closed,
    send (packet) { socket.write(Buffer.isBuffer(packet) ? packet : mqttPacket.generate(packet)) },
    async next (timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const p = queue.shift()
        if (p !== undefined) return p
        if (isClosed) return 'closed'
        const left = deadline - Date.now()
        if (left <= 0) return 'timeout'
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left)
          wake = () => { clearTimeout(timer); wake = null; resolve() }
        })
      }
    }
  }
}

function lengthPrefixed (s: string | Buffer): Buffer {
  const b = Buffer.from(s)
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

/**
 * A CONNECT built by hand (MQTT 3.1.1 §3.1): mqtt-packet refuses to encode some of the hostile
 * ones, such as an empty client id with CleanSession 0.
 */
function connectBytes (o: { clientId: string, clean?: boolean, username?: string, password?: string, keepalive?: number, mqtt31?: boolean }): Buffer {
  let flags = o.clean === false ? 0 : 0x02
  if (o.username !== undefined) flags |= 0x80
  if (o.password !== undefined) flags |= 0x40
  const keepalive = Buffer.alloc(2)
  keepalive.writeUInt16BE(o.keepalive ?? 30)
  const body = Buffer.concat([
    // MQTT 3.1 (IBM's v3): protocol name MQIsdp, level 3.
    ...(o.mqtt31 === true ? [lengthPrefixed('MQIsdp'), Buffer.from([3, flags])] : [lengthPrefixed('MQTT'), Buffer.from([4, flags])]),
    keepalive, lengthPrefixed(o.clientId),
    ...(o.username === undefined ? [] : [lengthPrefixed(o.username)]),
    ...(o.password === undefined ? [] : [lengthPrefixed(o.password)])
  ])
  return Buffer.concat([Buffer.from([0x10]), remainingLength(body.length), body])
}

/** CONNACK return code, or 'closed' when the broker closed the connection without one. */
async function connectResult (o: Parameters<typeof connectBytes>[0], localAddress?: string): Promise<number | 'closed' | 'timeout'> {
  const c = await openRaw(localAddress)
  c.send(connectBytes(o))
  const p = await c.next()
  c.socket.destroy()
  return typeof p === 'string' ? p : p.cmd === 'connack' ? p.returnCode! : 'closed'
}

async function connected (o: { localAddress?: string, keepalive?: number } = {}): Promise<RawClient> {
  const c = await openRaw(o.localAddress)
  c.send(connectBytes({ clientId: device.deviceId, username: device.deviceId, password: device.password, keepalive: o.keepalive }))
  const connack = await c.next()
  if (typeof connack === 'string' || connack.cmd !== 'connack' || connack.returnCode !== 0) {
    throw new Error(`connect failed: ${JSON.stringify(connack)}`)
  }
  return c
}

let ts = Date.now() - 3_600_000
function reading (): Buffer {
  return Buffer.from(telemetry(1, [{ metric: 'heart_rate', value: 72, unit: '/min', ts: ts++ }]))
}

t.test('address keys: IPv4, IPv4-mapped IPv6, and an IPv6 /64', async (t) => {
  t.equal(addressKey('10.1.2.3'), '10.1.2.3')
  t.equal(addressKey('::ffff:10.1.2.3'), '10.1.2.3')
  t.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2::5'), addressKey('2001:0db8:0001:0002:ffff:1:2:3'))
  t.equal(addressKey('2001:db8::1'), '2001:db8:0:0::/64')
  t.equal(addressKey('fe80::1%eth0'), 'fe80:0:0:0::/64')
  t.equal(addressKey(undefined), 'unknown')
})

t.test('address guard: token bucket and lockout on a fake clock', async (t) => {
  let now = 0
  const guard = createAddressGuard({ connectsPerMinute: 2, failuresBeforeLockout: 2, failureWindowMs: 10_000, lockoutMs: 5_000 }, () => now)
  t.teardown(() => guard.close())
  t.equal(guard.admitConnection('10.0.0.1'), 'admitted')
  t.equal(guard.admitConnection('10.0.0.1'), 'admitted')
  t.equal(guard.admitConnection('10.0.0.1'), 'refused_first')
  t.equal(guard.admitConnection('10.0.0.1'), 'refused')
  t.equal(guard.admitConnection('10.0.0.2'), 'admitted', 'another address has its own allowance')
  now += 30_000
  t.equal(guard.admitConnection('10.0.0.1'), 'admitted', 'one connection refilled after 30 s')

  t.equal(guard.recordAuthFailure('10.0.0.1'), false)
  now += 11_000
  t.equal(guard.recordAuthFailure('10.0.0.1'), false, 'the first failure fell out of the window')
  t.equal(guard.recordAuthFailure('10.0.0.1'), true, 'two within the window lock the address out')
  t.equal(guard.lockedOut('10.0.0.1'), true)
  t.equal(guard.lockedOut('10.0.0.2'), false)
  now += 5_001
  t.equal(guard.lockedOut('10.0.0.1'), false, 'the lockout ends')
})

t.test('Aedes and parser errors map to refusal reasons', async (t) => {
  t.equal(reasonOfAedesError(new Error('connect did not arrive in time')), 'connect_timeout')
  t.equal(reasonOfAedesError(new Error('topic has too many levels')), 'topic_too_deep')
  t.equal(reasonOfAedesError(new Error('maxInflightInbound exceeded: 5 inbound QoS 2 messages already awaiting PUBREL')), 'qos2_inflight_exceeded')
  t.equal(reasonOfAedesError(Object.assign(new Error('keep alive limit exceeded'), { errorCode: 6 })), 'keepalive_not_allowed')
  t.equal(reasonOfAedesError(new Error('Invalid header flag bits, must be 0x0 for connect packet')), 'malformed_packet')
  t.equal(reasonOfAedesError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })), null)
  t.equal(reasonOfAedesError(new Error('keep alive timeout')), null)
})

t.test('a socket that never completes CONNECT is closed after MQTT_CONNECT_TIMEOUT_SECONDS', async (t) => {
  const before = await vigil.refusedCount('connect_timeout')
  const silent = await openRaw()
  const partial = await openRaw()
  // A CONNECT header declaring 100 bytes, then only 3 of them.
  partial.send(Buffer.from([0x10, 100, 0, 4, 0x4d]))
  const started = Date.now()
  t.equal(await silent.next(10_000), 'closed', 'a silent socket is closed')
  t.equal(await partial.next(10_000), 'closed', 'a half-sent CONNECT is closed')
  const elapsed = Date.now() - started
  t.ok(elapsed >= 800 && elapsed < 8000, `closed after ${elapsed} ms (limit 1 s)`)
  t.equal(await vigil.refusedCount('connect_timeout'), before + 2)
})

t.test('more than 42 packets sent before the CONNACK close the connection', async (t) => {
  const before = await vigil.refusedCount('queue_limit')
  const c = await openRaw()
  const pings = Buffer.concat(Array.from({ length: 50 }, () => mqttPacket.generate({ cmd: 'pingreq' })))
  // One write, so the broker parses them all while the CONNECT is still being authenticated.
  c.send(Buffer.concat([connectBytes({ clientId: device.deviceId, username: device.deviceId, password: device.password }), pings]))
  let packet
  do packet = await c.next()
  while (typeof packet !== 'string')
  t.equal(packet, 'closed')
  t.equal(await vigil.refusedCount('queue_limit'), before + 1, 'counted as queue_limit (Aedes queueLimit, 42)')
})

t.test('a packet type only a server sends closes the connection, counted once (MQTT-4.8.0-1)', async (t) => {
  const packets: Array<[string, number[]]> = [
    ['CONNACK', [0x20, 0x02, 0x00, 0x00]], ['SUBACK', [0x90, 0x03, 0x00, 0x01, 0x00]],
    ['UNSUBACK', [0xb0, 0x02, 0x00, 0x01]], ['PINGRESP', [0xd0, 0x00]], ['reserved 0', [0x00, 0x00]], ['reserved 15', [0xf0, 0x00]]
  ]
  for (const [name, bytes] of packets) {
    const before = await vigil.refusedCount('protocol_violation')
    const c = await connected()
    c.send(Buffer.from(bytes))
    t.equal(await c.next(), 'closed', `${name} from a client closes its connection`)
    t.equal(await vigil.refusedCount('protocol_violation'), before + 1, `${name}: counted once as protocol_violation`)
  }
  const before = await vigil.refusedCount('protocol_violation')
  const early = await openRaw()
  early.send(mqttPacket.generate({ cmd: 'pingreq' }))
  t.equal(await early.next(), 'closed', 'a packet before CONNECT closes the connection (MQTT-3.1.0-1)')
  t.equal(await vigil.refusedCount('protocol_violation'), before + 1)
})

t.test('keepalive: longer than MQTT_KEEPALIVE_LIMIT_SECONDS, or 0 (none), is refused', async (t) => {
  const creds = { clientId: device.deviceId, username: device.deviceId, password: device.password }
  const before = await vigil.refusedCount('keepalive_not_allowed')
  // Aedes answers with return code 6; MQTT 3.1.1 has no code for this (§3.2.2.3 reserves 6–255),
  // so any client takes it as a refusal.
  t.equal(await connectResult({ ...creds, keepalive: 61 }), 6, 'keepalive 61 s refused')
  t.equal(await connectResult({ ...creds, keepalive: 0 }), 6, 'keepalive 0 refused: a dead device would never time out')
  t.equal(await vigil.refusedCount('keepalive_not_allowed'), before + 2)
  const ok = await connected({ keepalive: 60 })
  ok.socket.destroy()
  t.pass('keepalive 60 s accepted')
})

t.test('MQTT 3.1 (MQIsdp, level 3) is refused with CONNACK 1: Vigil speaks 3.1.1 only (MQTT-3.1.2-2)', async (t) => {
  const before = await vigil.refusedCount('protocol_version')
  t.equal(await connectResult({ clientId: device.deviceId, username: device.deviceId, password: device.password, mqtt31: true }), 1,
    'valid credentials, MQTT 3.1: unacceptable protocol version')
  t.equal(await vigil.refusedCount('protocol_version'), before + 1, 'counted as protocol_version')
})

t.test('client ids are checked before anything else reads them', async (t) => {
  const password = device.password
  const cases: Array<[string, { clientId: string, clean?: boolean, username?: string }, number | 'closed', string]> = [
    ['empty, CleanSession 0 (MQTT-3.1.3-8)', { clientId: '', clean: false, username: device.deviceId }, 2, 'client_id_empty'],
    ['empty, CleanSession 1', { clientId: '', clean: true, username: device.deviceId }, 2, 'client_id_empty'],
    ['with +', { clientId: 'dev+1', username: device.deviceId }, 2, 'client_id_invalid'],
    ['with #', { clientId: 'dev#', username: device.deviceId }, 2, 'client_id_invalid'],
    ['with /', { clientId: `devices/${device.deviceId}`, username: device.deviceId }, 2, 'client_id_invalid'],
    ['with U+0000 (MQTT-1.5.3-2: close, no CONNACK)', { clientId: `${device.deviceId}\u0000`, username: device.deviceId }, 'closed', 'client_id_invalid'],
    ['65 characters', { clientId: 'a'.repeat(65), username: device.deviceId }, 2, 'client_id_invalid'],
    ['non-ASCII', { clientId: 'dévice', username: device.deviceId }, 2, 'client_id_invalid'],
    ['__proto__', { clientId: '__proto__', username: device.deviceId }, 5, 'client_id_mismatch'],
    ['constructor', { clientId: 'constructor', username: device.deviceId }, 5, 'client_id_mismatch'],
    ['hasOwnProperty', { clientId: 'hasOwnProperty', username: device.deviceId }, 5, 'client_id_mismatch']
  ]
  for (const [name, o, expected, reason] of cases) {
    const before = await vigil.refusedCount(reason)
    t.equal(await connectResult({ ...o, password }), expected, `client id ${name}: ${expected}`)
    t.equal(await vigil.refusedCount(reason), before + 1, `counted as ${reason}`)
  }
})

t.test('usernames that are not device ids are refused', async (t) => {
  const cases: Array<[string, number | 'closed', string]> = [
    [`${device.deviceId}+`, 5, 'username_invalid'],
    ['#', 5, 'username_invalid'],
    [`devices/${device.deviceId}`, 5, 'username_invalid'],
    [`${device.deviceId}\u0000`, 'closed', 'username_invalid'],
    ['__proto__', 5, 'username_invalid'],
    ['constructor', 5, 'username_invalid'],
    ['toString', 5, 'username_invalid']
  ]
  for (const [username, expected, reason] of cases) {
    const before = await vigil.refusedCount(reason)
    // The client id must pass first, so it is the username that is judged.
    const clientId = /^[A-Za-z0-9_-]{1,64}$/.test(username) ? username : device.deviceId
    t.equal(await connectResult({ clientId, username, password: device.password }), expected, `username ${JSON.stringify(username)}: ${expected}`)
    t.equal(await vigil.refusedCount(reason), before + 1, `counted as ${reason}`)
  }
  const ok = await connected()
  ok.socket.destroy()
  t.pass('the device itself still connects')
})

t.test('repeated refused credentials lock the address out, without a credential check', async (t) => {
  const attacker = freshAddress()
  const neighbour = freshAddress()
  const creds = { clientId: device.deviceId, username: device.deviceId }
  for (let i = 0; i < 3; i++) {
    t.equal(await connectResult({ ...creds, password: `vgl_wrong_${i}` }, attacker), 5, `wrong password ${i + 1}`)
  }
  const lockedBefore = await vigil.refusedCount('locked_out')
  const badBefore = await vigil.refusedCount('bad_credentials')
  t.equal(await connectResult({ ...creds, password: device.password }, attacker), 5, 'locked out: even the right password gets CONNACK 5')
  t.equal(await vigil.refusedCount('locked_out'), lockedBefore + 1, 'counted as locked_out')
  t.equal(await vigil.refusedCount('bad_credentials'), badBefore, 'not a credential check')
  t.equal(await connectResult({ ...creds, password: device.password }, neighbour), 0, 'another address is not affected')
  await new Promise((resolve) => setTimeout(resolve, 2100))
  t.equal(await connectResult({ ...creds, password: device.password }, attacker), 0, 'after MQTT_LOCKOUT_SECONDS the address may connect again')
})

t.test('connections per address are rate limited before any MQTT work', async (t) => {
  const flooder = freshAddress()
  const before = await vigil.refusedCount('connect_rate_limited')
  const results: Array<number | 'closed' | 'timeout'> = []
  // Anonymous CONNECTs: refused with CONNACK 5 when admitted, and not counted towards a lockout.
  for (let i = 0; i < 22; i++) results.push(await connectResult({ clientId: 'probe' }, flooder))
  t.same(results.slice(0, 20), Array(20).fill(5), 'the first 20 (a minute\'s allowance) reach the broker')
  t.same(results.slice(20), ['closed', 'closed'], 'past the allowance the socket is closed at once')
  t.equal(await vigil.refusedCount('connect_rate_limited'), before + 2)
  t.equal(await connectResult({ clientId: 'probe' }, freshAddress()), 5, 'another address is admitted')
})

t.test('topics deeper than MQTT_MAX_TOPIC_LEVELS close the connection without PUBACK', async (t) => {
  const before = await vigil.refusedCount('topic_too_deep')
  const publisher = await connected()
  publisher.send({ cmd: 'publish', topic: `devices/${device.deviceId}/telemetry/a/b/c`, qos: 1, messageId: 1, retain: false, dup: false, payload: reading() })
  t.equal(await publisher.next(), 'closed', 'closed, no PUBACK')
  const subscriber = await connected()
  subscriber.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${device.deviceId}/a/b/c/#`, qos: 1 }] })
  t.equal(await subscriber.next(), 'closed', 'a filter deeper than the limit closes the connection too')
  t.equal(await vigil.refusedCount('topic_too_deep'), before + 2)
})

t.test('in-flight QoS 2 messages are bounded by MQTT_MAX_INFLIGHT_QOS2', async (t) => {
  const well = await connected()
  // A well-behaved publisher releases each message (PUBREL) and may send many more than the bound.
  for (let id = 1; id <= 8; id++) {
    well.send({ cmd: 'publish', topic: `devices/${device.deviceId}/telemetry`, qos: 2, messageId: id, retain: false, dup: false, payload: reading() })
    const rec = await well.next()
    t.equal(typeof rec === 'string' ? rec : rec.cmd, 'pubrec')
    well.send({ cmd: 'pubrel', messageId: id })
    const comp = await well.next()
    t.equal(typeof comp === 'string' ? comp : comp.cmd, 'pubcomp')
  }
  well.socket.destroy()

  const before = await vigil.refusedCount('qos2_inflight_exceeded')
  const hoarder = await connected()
  let pubrecs = 0
  for (let id = 1; id <= 6; id++) {
    hoarder.send({ cmd: 'publish', topic: `devices/${device.deviceId}/telemetry`, qos: 2, messageId: id, retain: false, dup: false, payload: reading() })
  }
  for (;;) {
    const p = await hoarder.next()
    if (typeof p === 'string') break
    if (p.cmd === 'pubrec') pubrecs++
  }
  t.ok(pubrecs <= 5, `${pubrecs} PUBRECs, then the connection was closed`)
  t.equal(await vigil.refusedCount('qos2_inflight_exceeded'), before + 1)
})

t.test('$SYS/ stays read-only, and retained messages are refused', async (t) => {
  const before = { topic: await vigil.refusedCount('topic_not_allowed'), sub: await vigil.refusedCount('subscribe_not_allowed'), retain: await vigil.refusedCount('retain_not_allowed') }
  const reader = await connected()
  reader.send({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: '$SYS/#', qos: 0 }, { topic: '$SYS/+/new/clients', qos: 0 }, { topic: `devices/${device.deviceId}/#`, qos: 0 }] })
  const suback = await reader.next()
  t.same(typeof suback === 'string' ? suback : (suback as mqttPacket.ISubackPacket).granted, [128, 128, 0], 'SUBACK 0x80 for both $SYS filters, the own topic granted')
  reader.socket.destroy()

  for (const topic of ['$SYS/vigil/heartbeat', `$SYS/${device.deviceId}/new/clients`]) {
    const writer = await connected()
    writer.send({ cmd: 'publish', topic, qos: 1, messageId: 1, retain: false, dup: false, payload: Buffer.from('x') })
    t.equal(await writer.next(), 'closed', `publishing to ${topic} closes the connection without PUBACK`)
  }
  const retainer = await connected()
  retainer.send({ cmd: 'publish', topic: `devices/${device.deviceId}/telemetry`, qos: 1, messageId: 1, retain: true, dup: false, payload: reading() })
  t.equal(await retainer.next(), 'closed', 'a retained publish closes the connection without PUBACK')
  t.equal(await vigil.refusedCount('subscribe_not_allowed'), before.sub + 2)
  t.equal(await vigil.refusedCount('topic_not_allowed'), before.topic + 2)
  t.equal(await vigil.refusedCount('retain_not_allowed'), before.retain + 1)
})

/** Resolves when the socket drains or closes, or after `ms`, leaving no listener behind. */
async function drainedOrClosed (socket: net.Socket, ms: number): Promise<void> {
  await new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      socket.off('drain', done)
      socket.off('close', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    socket.once('drain', done)
    socket.once('close', done)
  })
}

t.test('a subscriber that stops reading cannot stall other devices', async (t) => {
  const other = await vigil.provision()
  // The slow one: subscribed to its own topic, it keeps publishing but never reads its socket,
  // so every message comes back at it and piles up in its TCP buffers.
  const slow = await connected()
  slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `devices/${device.deviceId}/#`, qos: 0 }] })
  const suback = await slow.next()
  t.equal(typeof suback === 'string' ? suback : suback.cmd, 'suback')
  slow.socket.pause()

  const b = await vigil.connect(other.deviceId, other.password)
  t.teardown(() => b.endAsync(true))
  await b.subscribeAsync(`devices/${other.deviceId}/#`, { qos: 1 })
  let echoed: (() => void) | null = null
  b.on('message', () => echoed?.())
  const within = async (ms: number, p: Promise<unknown>): Promise<boolean> =>
    await Promise.race([p.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms))])

  // B's round trip: QoS 1 PUBACK, delivery of its own message back to it, a QoS 2 handshake.
  // Aedes delivers through one emitter shared by all clients (100 deliveries at a time); a reader
  // that never drains would hold every slot and freeze delivery and PUBREC for everyone until
  // Aedes' drainTimeout (measured without Vigil's bound: B's echo and QoS 2 stuck for 20 s+).
  // B's readings queue behind the flood's in ingest, hence the generous bound.
  let worst = 0
  let seq = 0
  async function probe (): Promise<void> {
    const started = Date.now()
    const echo = new Promise<void>((resolve) => { echoed = resolve })
    t.ok(await within(15_000, b.publishAsync(`devices/${other.deviceId}/telemetry`, telemetry(++seq, [{ metric: 'heart_rate', value: 70, unit: '/min' }]), { qos: 1 })), 'B: PUBACK')
    t.ok(await within(15_000, echo), 'B: own message delivered')
    t.ok(await within(15_000, b.publishAsync(`devices/${other.deviceId}/telemetry`, telemetry(++seq, [{ metric: 'spo2', value: 97, unit: '%' }]), { qos: 2 })), 'B: QoS 2 completes')
    worst = Math.max(worst, Date.now() - started)
  }

  const before = await vigil.refusedCount('slow_subscriber')
  const deadline = Date.now() + 120_000
  // One reading timestamp for the whole flood: the store keeps it as one row.
  const payload = Buffer.from(telemetry(1, [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() - 1000 }]))
  const burst = Buffer.concat(Array.from({ length: 500 }, () =>
    mqttPacket.generate({ cmd: 'publish', topic: `devices/${device.deviceId}/telemetry`, qos: 0, retain: false, dup: false, payload })))
  let bursts = 0
  let slowClosed = false
  void slow.closed.then(() => { slowClosed = true })
  while (!slowClosed && Date.now() < deadline) {
    if (!slow.socket.write(burst)) await drainedOrClosed(slow.socket, 200)
    if (++bursts % 10 === 0) await probe()
  }
  t.ok(slowClosed, `the slow subscriber was disconnected after ${bursts} bursts (${(slow.socket.bytesWritten / 1e6).toFixed(1)} MB sent)`)
  t.equal(await vigil.refusedCount('slow_subscriber'), before + 1, 'counted as slow_subscriber')
  await probe()
  t.ok(worst < 15_000, `B's worst round trip during the flood: ${worst} ms`)
  t.comment(`slow subscriber: dropped after ${(slow.socket.bytesWritten / 1e6).toFixed(1)} MB; B's worst round trip ${worst} ms`)
})

// ----------------------------------------------------------------------------------------
// Memory under hostile sockets: measured on a separate Vigil process, so the figure is the
// broker's alone and not this test's clients.
// ----------------------------------------------------------------------------------------

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

async function rssBytes (pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024
}

t.test('100 hostile sockets declaring huge packets raise Vigil\'s RSS by less than 10 MB', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-hostile-'))
  t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
  const child = spawn(process.execPath, ['--import', 'tsx', 'main.ts'], {
    cwd: root,
    env: { ...process.env, HTTP_PORT: '0', MQTT_PORT: '0', VIGIL_DATA_DIR: dataDir, LOG_LEVEL: 'warn', API_MAX_EVENT_LOOP_DELAY_MS: '0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr.on('data', (d: Buffer) => { output += d.toString() })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  t.teardown(async () => { child.kill('SIGTERM'); await exited })
  let mqttPort = 0
  const startDeadline = Date.now() + 120_000
  while (mqttPort === 0) {
    const listening = await fs.readFile(path.join(dataDir, 'listening.json'), 'utf8').then((s) => JSON.parse(s) as { pid: number, mqttPort: number }, () => undefined)
    if (listening !== undefined && listening.pid === child.pid) mqttPort = listening.mqttPort
    else if (child.exitCode !== null || Date.now() > startDeadline) throw new Error(`vigil did not start:\n${output}`)
    else await new Promise((resolve) => setTimeout(resolve, 200))
  }
  const pid = child.pid!

  async function hostileRound (trickleChunks: number): Promise<void> {
    const sockets = await Promise.all(Array.from({ length: 100 }, async () => {
      const socket = net.connect(mqttPort, '127.0.0.1')
      socket.on('error', () => {})
      await new Promise((resolve) => socket.once('connect', resolve))
      return socket
    }))
    const chunk = Buffer.alloc(16 * 1024, 0x41)
    // Each declares a 200 MB CONNECT, then trickles its body 16 KiB at a time: unbounded, the
    // broker would buffer all of it (2 MB per socket, 200 MB in all, in the measured round).
    for (const s of sockets) s.write(Buffer.concat([Buffer.from([0x10]), remainingLength(200_000_000)]))
    for (let i = 0; i < trickleChunks; i++) {
      for (const s of sockets) if (!s.destroyed) s.write(chunk)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    await Promise.all(sockets.map(async (s) => {
      if (!s.destroyed) await Promise.race([new Promise((resolve) => s.once('close', resolve)), new Promise((resolve) => setTimeout(resolve, 5000))])
      s.destroy()
    }))
  }

  // A first round (headers only) warms up what a connection allocates once (code, pools).
  await hostileRound(0)
  await new Promise((resolve) => setTimeout(resolve, 500))
  const baseline = await rssBytes(pid)
  let peak = baseline
  const sampler = setInterval(() => { rssBytes(pid).then((r) => { peak = Math.max(peak, r) }, () => {}) }, 20)
  await hostileRound(128)
  clearInterval(sampler)
  peak = Math.max(peak, await rssBytes(pid))
  const growth = peak - baseline
  t.ok(growth < 10 * 1024 * 1024, `peak RSS growth ${(growth / 1024 / 1024).toFixed(2)} MB (baseline ${(baseline / 1024 / 1024).toFixed(1)} MB)`)
  t.comment(`hostile sockets: RSS baseline ${(baseline / 1024 / 1024).toFixed(1)} MB, peak growth ${(growth / 1024 / 1024).toFixed(2)} MB`)
  const metrics = await fetch(`http://127.0.0.1:${JSON.parse(await fs.readFile(path.join(dataDir, 'listening.json'), 'utf8')).httpPort}/metrics`).then((r) => r.text())
  t.match(metrics, /vigil_mqtt_refused_total\{reason="packet_too_large"\} 200/, 'each socket refused once')
})
