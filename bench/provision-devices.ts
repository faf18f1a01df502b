import { setTimeout as sleep } from 'node:timers/promises'
import type { DeviceCredential } from './generator-protocol.ts'

export interface ProvisionedDevice extends DeviceCredential {
  patientId: string
}

/**
 * Calls Vigil's HTTP API with the admin token; throws with the route and status on a non-2xx.
 * 429 (rate limited) and 503 (load shed) are retried after their Retry-After, and reported to
 * `onThrottled` so the bench can say why provisioning is slow.
 */
export function vigilApi (baseUrl: string, token: string, onThrottled?: (status: number, retryAfterSeconds: number) => void) {
  return async function call<T> (method: string, route: string, body?: unknown): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const res = await fetch(baseUrl + route, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(60_000)
      })
      const text = await res.text()
      if ((res.status === 429 || res.status === 503) && attempt < 50) {
        const retryAfter = Math.min(60, Math.max(0.2, Number(res.headers.get('retry-after') ?? 1) || 1))
        onThrottled?.(res.status, retryAfter)
        await sleep(retryAfter * 1000)
        continue
      }
      if (!res.ok) throw new Error(`${method} ${route} → HTTP ${res.status} ${text.slice(0, 300)}`)
      return (text === '' ? undefined : JSON.parse(text)) as T
    }
  }
}

/**
 * Provisions `count` patients, each with one device assigned from an hour ago and an MQTT
 * credential, through the public API (as an integrator would), `concurrency` devices at a time.
 */
export async function provisionDevices (
  baseUrl: string, token: string, count: number,
  options: { concurrency?: number, onProgress?: (done: number) => void, onThrottled?: (status: number, retryAfterSeconds: number) => void } = {}
): Promise<ProvisionedDevice[]> {
  const api = vigilApi(baseUrl, token, options.onThrottled)
  const validFrom = new Date(Date.now() - 3_600_000).toISOString()
  const startedAt = new Date().toISOString()
  // Locally administered MACs (0x02 first octet), unique within the run.
  const macPrefix = Math.floor(Math.random() * 0xffff)
  const devices: ProvisionedDevice[] = new Array(count)
  let next = 0
  let done = 0
  const worker = async (): Promise<void> => {
    while (next < count) {
      const n = next++
      const octets = [0x02, macPrefix >> 8, macPrefix & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]
      const mac = octets.map((o) => o.toString(16).padStart(2, '0')).join(':')
      const patient = await api<{ id: string }>('POST', '/v1/patients', { displayName: `Bench patient ${n + 1}` })
      const device = await api<{ id: string }>('POST', '/v1/devices', {
        name: `Bench monitor ${n + 1}`, mac, firmwareVersion: '1.0.0', softwareVersion: 'bench-1', startedAt
      })
      await api('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom })
      const credential = await api<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
      devices[n] = { patientId: patient.id, deviceId: device.id, password: credential.password }
      done++
      options.onProgress?.(done)
    }
  }
  await Promise.all(Array.from({ length: options.concurrency ?? 8 }, worker))
  return devices
}
