import fs from 'node:fs/promises'
import https from 'node:https'
import path from 'node:path'
import tls from 'node:tls'
import mqtt from 'mqtt'
import t from 'tap'
import WebSocket from 'ws'
import { createTestPki } from '../helpers/certificates.ts'
import { startTestVigil, telemetry, type TestVigil } from '../helpers/vigil.ts'
import { remainingLength } from '../helpers/fuzz.ts'
import { nextEvent, within } from '../helpers/wait.ts'

const pki = await createTestPki()
t.teardown(() => pki.remove())
const ca = await fs.readFile(pki.ca.certFile)

/** Publishes one reading at QoS 1 and returns what the API then has for the patient. */
async function publishAndReadBack (vigil: TestVigil, client: mqtt.MqttClient, deviceId: string, patientId: string, value: number): Promise<number[]> {
  await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(1, [{ metric: 'heart_rate', value, unit: '/min', ts: Date.now() - 1000 }]), { qos: 1 })
  const readings = await vigil.api<{ items: Array<{ value: number }> }>('GET', `/v1/patients/${patientId}/readings`)
  return readings.body.items.map((r) => r.value)
}

async function connectError (url: string, options: mqtt.IClientOptions): Promise<{ code?: unknown, message: string } | null> {
  try {
    // allowRetries false: a connection closed without CONNACK (a failed TLS 1.3 client
    // certificate check arrives after the client's handshake) rejects instead of hanging.
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000, ...options }, false)
    await c.endAsync(true)
    return null
  } catch (err) {
    return err as Error & { code?: unknown }
  }
}

t.test('TLS, WebSocket and HTTPS on port 0', async (t) => {
  const vigil = await startTestVigil({
    MQTT_TLS_PORT: '0',
    MQTT_TLS_CERT_FILE: pki.server.certFile,
    MQTT_TLS_KEY_FILE: pki.server.keyFile,
    MQTT_WS_PORT: '0',
    MQTT_MAX_PACKET_BYTES: '16384',
    HTTP_TLS_CERT_FILE: pki.server.certFile,
    HTTP_TLS_KEY_FILE: pki.server.keyFile
  }, undefined, { httpsCa: ca })
  t.teardown(() => vigil.close())
  const { deviceId, password, patientId } = await vigil.provision()

  t.test('every listener picked a port and listening.json lists them', async (t) => {
    const listening = JSON.parse(await fs.readFile(path.join(vigil.dataDir, 'listening.json'), 'utf8'))
    t.match(listening, { httpPort: vigil.httpPort, httpTls: true, mqttPort: vigil.mqttPort, mqttTlsPort: vigil.mqttTlsPort, mqttWsPort: vigil.mqttWsPort })
    for (const port of [vigil.httpPort, vigil.mqttPort, vigil.mqttTlsPort, vigil.mqttWsPort]) t.ok(typeof port === 'number' && port > 0)
    t.equal(new Set([vigil.httpPort, vigil.mqttPort, vigil.mqttTlsPort, vigil.mqttWsPort]).size, 4)
  })

  t.test('HTTPS API: TLS 1.2+, the right certificate, and no plain HTTP', async (t) => {
    const health = await vigil.api('GET', '/healthz')
    t.equal(health.status, 200, 'GET /healthz over HTTPS')
    const protocol = await new Promise<string | null>((resolve, reject) => {
      https.get(`https://127.0.0.1:${vigil.httpPort}/healthz`, { ca }, (res) => {
        resolve((res.socket as tls.TLSSocket).getProtocol())
        res.resume()
      }).on('error', reject)
    })
    t.match(protocol, /^TLSv1\.[23]$/)
    await t.rejects(fetch(`http://127.0.0.1:${vigil.httpPort}/healthz`), 'plain HTTP gets no answer')
    const old = await new Promise<string>((resolve) => {
      const s = tls.connect({ port: vigil.httpPort, host: '127.0.0.1', ca, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })
      s.on('secureConnect', () => { s.destroy(); resolve('connected') })
      s.on('error', (err) => resolve((err as Error & { code?: string }).code ?? err.message))
    })
    t.not(old, 'connected', `a TLS 1.1 client is refused (${old})`)
  })

  t.test('MQTT over TLS: connect, publish, read back', async (t) => {
    const client = await vigil.connect(deviceId, password, { ca }, 'tls')
    t.teardown(() => client.endAsync())
    t.match((client.stream as tls.TLSSocket).getProtocol(), /^TLSv1\.[23]$/)
    t.same(await publishAndReadBack(vigil, client, deviceId, patientId, 71), [71])
  })

  t.test('a TLS 1.1 client is refused', async (t) => {
    const before = await vigil.refusedCount('tls_protocol_version')
    const outcome = await new Promise<string>((resolve) => {
      const s = tls.connect({ port: vigil.mqttTlsPort!, host: '127.0.0.1', ca, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })
      s.on('secureConnect', () => { s.destroy(); resolve('connected') })
      s.on('error', (err) => resolve((err as Error & { code?: string }).code ?? err.message))
    })
    t.not(outcome, 'connected', `handshake failed: ${outcome}`)
    t.equal(await vigil.refusedCount('tls_protocol_version'), before + 1, 'the broker counted it')
  })

  t.test('the frame limit applies inside TLS', async (t) => {
    const before = await vigil.refusedCount('packet_too_large')
    const s = tls.connect({ port: vigil.mqttTlsPort!, host: '127.0.0.1', ca })
    s.on('error', () => {})
    await nextEvent(s, 'secureConnect', 'the TLS handshake')
    const closed = nextEvent(s, 'close', 'the TLS socket to close after a CONNECT declaring 200 MB')
    s.write(Buffer.concat([Buffer.from([0x10]), remainingLength(200_000_000)]))
    await closed
    t.equal(await vigil.refusedCount('packet_too_large'), before + 1)
  })

  t.test('MQTT over WebSocket: connect, publish, read back', async (t) => {
    const client = await vigil.connect(deviceId, password, {}, 'ws')
    t.teardown(() => client.endAsync())
    t.same((await publishAndReadBack(vigil, client, deviceId, patientId, 72)).sort(), [71, 72])
    t.equal(await connectError(vigil.mqttUrl('ws'), { clientId: deviceId, username: deviceId, password: 'vgl_wrong' }).then((e) => e?.code), 5, 'credentials are checked as on TCP')
  })

  t.test('the frame limit and maxPayload apply to WebSocket', async (t) => {
    const open = async (): Promise<WebSocket> => {
      const ws = new WebSocket(vigil.mqttUrl('ws'), 'mqtt')
      ws.on('error', () => {})
      await within('the WebSocket to open', new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('close', reject) }))
      return ws
    }
    const before = await vigil.refusedCount('packet_too_large')
    const declared = await open()
    t.equal(declared.protocol, 'mqtt', 'the server selects the mqtt subprotocol (MQTT-6.0.0-4)')
    const declaredClosed = nextEvent(declared, 'close', 'the WebSocket to close after a CONNECT declaring 200 MB')
    declared.send(Buffer.concat([Buffer.from([0x10]), remainingLength(200_000_000)]))
    await declaredClosed
    t.pass('a CONNECT declaring 200 MB closes the WebSocket')
    const big = await open()
    const code = nextEvent(big, 'close', 'the WebSocket to close after a 20 kB message').then(([c]) => c as number)
    big.send(Buffer.alloc(20_000))
    t.equal(await code, 1009, 'a WebSocket message over MQTT_MAX_PACKET_BYTES: close 1009 (message too big)')
    t.equal(await vigil.refusedCount('packet_too_large'), before + 2)
  })

  t.test('WebSocket: only /mqtt upgrades', async (t) => {
    const res = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${vigil.mqttWsPort!}/other`, 'mqtt')
      ws.on('unexpected-response', (_req, r) => { resolve(r.statusCode ?? 0); ws.terminate() })
      ws.on('error', () => {})
    })
    t.equal(res, 400)
    t.equal((await fetch(`http://127.0.0.1:${vigil.mqttWsPort!}/mqtt`)).status, 426, 'a plain HTTP request gets 426 Upgrade Required')
  })
})

t.test('mutual TLS: the client certificate must name the device', async (t) => {
  const vigil = await startTestVigil({
    MQTT_TLS_PORT: '0',
    MQTT_TLS_CERT_FILE: pki.server.certFile,
    MQTT_TLS_KEY_FILE: pki.server.keyFile,
    MQTT_TLS_CA_FILE: pki.ca.certFile
  })
  t.teardown(() => vigil.close())
  const a = await vigil.provision()
  const b = await vigil.provision()
  const certOf = async (cn: string, signer?: Parameters<typeof pki.client>[1]): Promise<{ cert: Buffer, key: Buffer }> => {
    const f = await pki.client(cn, signer)
    return { cert: await fs.readFile(f.certFile), key: await fs.readFile(f.keyFile) }
  }
  const certA = await certOf(a.deviceId)
  const url = vigil.mqttUrl('tls')
  const asA = { clientId: a.deviceId, username: a.deviceId, password: a.password, ca }

  t.test('the right certificate and password: connected, publishes', async (t) => {
    const client = await vigil.connect(a.deviceId, a.password, { ca, ...certA }, 'tls')
    t.teardown(() => client.endAsync())
    t.same(await publishAndReadBack(vigil, client, a.deviceId, a.patientId, 73), [73])
  })

  t.test("another device's certificate: CONNACK 5", async (t) => {
    const before = await vigil.refusedCount('certificate_mismatch')
    const err = await connectError(url, { ...asA, ...(await certOf(b.deviceId)) })
    t.equal(err?.code, 5)
    t.equal(await vigil.refusedCount('certificate_mismatch'), before + 1)
  })

  t.test('the password is still required with a valid certificate', async (t) => {
    t.equal((await connectError(url, { ...asA, ...certA, password: 'vgl_wrong' }))?.code, 5, 'wrong password')
    t.equal((await connectError(url, { clientId: a.deviceId, ca, ...certA }))?.code, 5, 'no credentials')
  })

  t.test('no client certificate, or one from another CA: the handshake fails', async (t) => {
    const before = await vigil.refusedCount('tls_client_certificate')
    t.ok(await connectError(url, asA), 'no certificate')
    const other = await pki.otherCa()
    t.ok(await connectError(url, { ...asA, ...(await certOf(a.deviceId, other)) }), 'untrusted certificate with the right name')
    t.equal(await vigil.refusedCount('tls_client_certificate'), before + 2, 'both counted')
  })
})
