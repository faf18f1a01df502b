import fs from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import { loadConfig } from '../../config/config.ts'
import { createLogger } from '../../observability/logger.ts'
import { startVigil, type Vigil } from '../../vigil.ts'
import { seedEmbeddedDatabase } from './pglite-template.ts'

export const adminToken = 'test-admin-token-0123456789abcdef'

export interface TestVigil extends Vigil {
  dataDir: string
  api<T = any> (method: string, route: string, body?: unknown, token?: string): Promise<{ status: number, body: T }>
  /** Creates a patient and a device assigned to it (from an hour ago) with a fresh credential. */
  provision (): Promise<{ patientId: string, deviceId: string, password: string }>
  /** The broker's URL for a transport (TLS and WebSocket only when their ports are set). */
  mqttUrl (transport?: MqttTransport): string
  connect (deviceId: string, password: string, options?: mqtt.IClientOptions, transport?: MqttTransport): Promise<mqtt.MqttClient>
  /** `vigil_mqtt_refused_total{reason}` now. */
  refusedCount (reason: string): Promise<number>
}

export type MqttTransport = 'tcp' | 'tls' | 'ws'

/**
 * Starts the whole service in-process on free ports, load shedding off (a busy machine must not
 * fail tests with 503) and one worker thread per pool (each thread loads the TypeScript sources
 * again: about a second of CPU; a test of concurrency sets WORKER_THREADS), and passwords
 * hashed at scrypt N=2^14, an eighth of the default's CPU. env adds to the test defaults. With
 * HTTP_TLS_CERT_FILE set, pass the CA that signed it as `httpsCa`: the API helpers then use HTTPS.
 * On the embedded database, a new data directory gets a copy of the migrated template
 * (helpers/pglite-template.ts) unless `freshDatabase` asks for a real first start.
 */
export async function startTestVigil (env: Record<string, string> = {}, dataDir?: string, options: { httpsCa?: Buffer, freshDatabase?: boolean } = {}): Promise<TestVigil> {
  const dir = dataDir ?? await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-test-'))
  if ((env.DATABASE_URL ?? '') === '' && options.freshDatabase !== true) await seedEmbeddedDatabase(dir)
  const config = loadConfig({
    HTTP_PORT: '0', MQTT_PORT: '0', VIGIL_DATA_DIR: dir, VIGIL_ADMIN_TOKEN: adminToken, LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    API_MAX_EVENT_LOOP_DELAY_MS: '0', WORKER_THREADS: '1', VIGIL_PASSWORD_SCRYPT_LOG2_N: '14', ...env
  })
  const vigil = await startVigil(config, createLogger(config.logLevel))
  const base = `${vigil.httpTls ? 'https' : 'http'}://127.0.0.1:${vigil.httpPort}`

  /** fetch, or node:https with the test CA (fetch cannot be given one without undici). */
  async function request (method: string, url: string, headers: Record<string, string>, body?: string): Promise<{ status: number, text: string }> {
    if (!vigil.httpTls) {
      const res = await fetch(url, { method, headers, body })
      return { status: res.status, text: await res.text() }
    }
    return await new Promise((resolve, reject) => {
      const req = https.request(url, { method, headers, ca: options.httpsCa }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  async function api<T> (method: string, route: string, body?: unknown, token = adminToken): Promise<{ status: number, body: T }> {
    if (vigil.httpTls) {
      const res = await request(method, base + route, {
        authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' })
      }, body === undefined ? undefined : JSON.stringify(body))
      return { status: res.status, body: (res.text === '' ? undefined : JSON.parse(res.text)) as T }
    }
    const res = await fetch(base + route, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const text = await res.text()
    return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T }
  }

  async function must<T> (method: string, route: string, body?: unknown): Promise<T> {
    const res = await api<T>(method, route, body)
    if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
    return res.body
  }

  let macCounter = Math.floor(Math.random() * 0xffff) * 0x10000
  return {
    ...vigil,
    dataDir: dir,
    api,
    async provision () {
      const patient = await must<{ id: string }>('POST', '/v1/patients', { displayName: 'Test Patient' })
      macCounter++
      const mac = `02:00:${macCounter.toString(16).padStart(8, '0').replace(/(..)(?!$)/g, '$1:')}`
      const device = await must<{ id: string }>('POST', '/v1/devices', {
        name: 'Test oximeter', mac, firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2026-01-01T00:00:00Z'
      })
      await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom: new Date(Date.now() - 3_600_000).toISOString() })
      const cred = await must<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
      return { patientId: patient.id, deviceId: device.id, password: cred.password }
    },
    mqttUrl,
    async connect (deviceId, password, options = {}, transport = 'tcp') {
      return await mqtt.connectAsync(mqttUrl(transport), {
        clientId: deviceId, username: deviceId, password, reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000, ...options
      })
    },
    async refusedCount (reason) {
      const { text } = await request('GET', `${base}/metrics`, {})
      const line = text.split('\n').find((l) => l.startsWith(`vigil_mqtt_refused_total{reason="${reason}"} `))
      return line === undefined ? 0 : Number(line.split(' ')[1])
    }
  }

  function mqttUrl (transport: MqttTransport = 'tcp'): string {
    const port = transport === 'tcp' ? vigil.mqttPort : transport === 'tls' ? vigil.mqttTlsPort : vigil.mqttWsPort
    if (port === null) throw new Error(`${transport} is not configured for this test Vigil`)
    return transport === 'tcp' ? `mqtt://127.0.0.1:${port}` : transport === 'tls' ? `mqtts://127.0.0.1:${port}` : `ws://127.0.0.1:${port}/mqtt`
  }
}

/** A telemetry payload in the documented JSON format. */
export function telemetry (seq: number, readings: Array<{ metric: string, value: number, unit: string, ts?: number }>): string {
  return JSON.stringify({ seq, readings: readings.map((r) => ({ ...r, ts: r.ts ?? Date.now() })) })
}
