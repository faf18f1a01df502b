import net from 'node:net'
import tls from 'node:tls'
import fs from 'node:fs/promises'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { createTestPki } from '../helpers/certificates.ts'
import { startTestVigil } from '../helpers/vigil.ts'

// Issue 16: behind HAProxy (TCP mode, send-proxy) every device had the balancer's address, so
// one device's wrong passwords locked out the fleet. With MQTT_PROXY_PROTOCOL the header's
// address is the one limits, lockouts and logs use. Raw sockets: the test writes the PROXY
// header itself, then the MQTT CONNECT. 127.0.0.1 plays the trusted proxy; 127.0.0.2 is not one.
const pki = await createTestPki()
t.teardown(() => pki.remove())
const vigil = await startTestVigil({
  MQTT_TLS_PORT: '0',
  MQTT_TLS_CERT_FILE: pki.server.certFile,
  MQTT_TLS_KEY_FILE: pki.server.keyFile,
  MQTT_PROXY_PROTOCOL: 'true',
  TRUST_PROXY: '127.0.0.1/32',
  MQTT_AUTH_FAILURES_BEFORE_LOCKOUT: '2',
  MQTT_LOCKOUT_SECONDS: '300'
})
t.teardown(() => vigil.close())
const device = await vigil.provision()

function v1 (client: string): Buffer {
  return Buffer.from(`PROXY TCP4 ${client} 10.0.0.1 51000 1883\r\n`, 'latin1')
}

function v2 (client: string): Buffer {
  const header = Buffer.alloc(16 + 12)
  Buffer.from('0d0a0d0a000d0a515549540a', 'hex').copy(header)
  header[12] = 0x21 // version 2, PROXY
  header[13] = 0x11 // AF_INET, STREAM
  header.writeUInt16BE(12, 14)
  client.split('.').forEach((octet, i) => { header[16 + i] = Number(octet) })
  ;[10, 0, 0, 1].forEach((octet, i) => { header[20 + i] = octet })
  header.writeUInt16BE(51000, 24)
  header.writeUInt16BE(1883, 26)
  return header
}

function connectPacket (password: string): Buffer {
  return mqttPacket.generate({
    cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30,
    clientId: device.deviceId, username: device.deviceId, password: Buffer.from(password)
  })
}

/** The CONNACK return code, or 'closed' when the broker closed the socket without one. */
async function attempt (bytes: Buffer, port: number, localAddress = '127.0.0.1', tlsAfter?: Buffer): Promise<number | 'closed'> {
  const raw = net.connect({ port, host: '127.0.0.1', localAddress })
  raw.on('error', () => {})
  t.teardown(() => { raw.destroy() })
  await new Promise((resolve, reject) => { raw.once('connect', resolve); raw.once('close', reject) })
  let socket: net.Socket = raw
  if (tlsAfter !== undefined) {
    // The PROXY header in clear, then the TLS handshake on the same connection (HAProxy in TCP mode).
    raw.write(bytes)
    bytes = tlsAfter
    socket = tls.connect({ socket: raw, ca: await fs.readFile(pki.ca.certFile), servername: 'localhost' })
    socket.on('error', () => {})
    await new Promise((resolve, reject) => { socket.once('secureConnect', resolve); socket.once('close', reject) })
  }
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const answer = new Promise<number | 'closed'>((resolve) => {
    parser.on('packet', (p) => { if (p.cmd === 'connack') resolve(p.returnCode ?? 0) })
    socket.once('close', () => resolve('closed'))
  })
  socket.on('data', (d: Buffer) => parser.parse(d))
  socket.write(bytes)
  const result = await answer
  socket.destroy()
  return result
}

t.test('limits see the address in the PROXY header (v1 and v2)', async (t) => {
  const port = vigil.mqttPort
  t.equal(await attempt(Buffer.concat([v1('198.51.100.7'), connectPacket(device.password)]), port), 0, 'v1: connected')
  t.equal(await attempt(Buffer.concat([v2('198.51.100.9'), connectPacket(device.password)]), port), 0, 'v2: connected')
  for (let i = 0; i < 2; i++) {
    t.equal(await attempt(Buffer.concat([v1('198.51.100.7'), connectPacket(`vgl_wrong_${i}`)]), port), 5, `wrong password ${i + 1} from 198.51.100.7`)
  }
  const lockedBefore = await vigil.refusedCount('locked_out')
  t.equal(await attempt(Buffer.concat([v2('198.51.100.7'), connectPacket(device.password)]), port), 5, '198.51.100.7 is locked out (v2 names it too)')
  t.equal(await vigil.refusedCount('locked_out'), lockedBefore + 1, 'counted as locked_out')
  t.equal(await attempt(Buffer.concat([v1('198.51.100.8'), connectPacket(device.password)]), port), 0,
    'another device behind the same proxy is not: the lockout is not the proxy\'s')
})

t.test('over TLS: the header comes before the handshake', async (t) => {
  const port = vigil.mqttTlsPort!
  t.equal(await attempt(v2('198.51.100.7'), port, '127.0.0.1', connectPacket(device.password)), 5, 'the address locked out above is locked out over TLS too')
  t.equal(await attempt(v1('198.51.100.41'), port, '127.0.0.1', connectPacket(device.password)), 0, 'another address connects')
})

t.test('only trusted proxies, and only with a header', async (t) => {
  const port = vigil.mqttPort
  const untrusted = await vigil.refusedCount('proxy_untrusted')
  t.equal(await attempt(Buffer.concat([v1('198.51.100.20'), connectPacket(device.password)]), port, '127.0.0.2'), 'closed', 'a PROXY header from an untrusted address')
  t.equal(await vigil.refusedCount('proxy_untrusted'), untrusted + 1, 'counted as proxy_untrusted')
  const invalid = await vigil.refusedCount('proxy_header_invalid')
  t.equal(await attempt(connectPacket(device.password), port), 'closed', 'a trusted proxy without a header')
  t.equal(await attempt(Buffer.concat([Buffer.from('PROXY TCP4 nonsense\r\n'), connectPacket(device.password)]), port), 'closed', 'a malformed header')
  t.equal(await vigil.refusedCount('proxy_header_invalid'), invalid + 2, 'counted as proxy_header_invalid')
})

t.test('without MQTT_PROXY_PROTOCOL a PROXY header is refused', async (t) => {
  const plain = await startTestVigil({})
  t.teardown(() => plain.close())
  const provisioned = await plain.provision()
  const packet = mqttPacket.generate({
    cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30,
    clientId: provisioned.deviceId, username: provisioned.deviceId, password: Buffer.from(provisioned.password)
  })
  t.equal(await attempt(Buffer.concat([v1('198.51.100.30'), packet]), plain.mqttPort), 'closed', 'v1 header: closed, no CONNACK')
  t.equal(await attempt(Buffer.concat([v2('198.51.100.31'), packet]), plain.mqttPort), 'closed', 'v2 header: closed, no CONNACK')
  t.equal(await attempt(packet, plain.mqttPort), 0, 'the same CONNECT alone connects')
})
