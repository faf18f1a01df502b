import { randomBytes } from 'node:crypto'

/** Creates a patient and a device assigned to it from an hour ago, with a fresh MQTT credential, over the API. */
export async function provisionDevice (baseUrl: string, token: string): Promise<{ patientId: string, deviceId: string, password: string }> {
  async function must<T> (method: string, route: string, body?: unknown): Promise<T> {
    // A busy machine can make a fresh process shed load (503 before any work is done): retry
    // that a few times, as Retry-After asks, never anything else.
    for (let attempt = 1; ; attempt++) {
      const res = await fetch(baseUrl + route, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body)
      })
      const text = await res.text()
      if (res.status === 503 && attempt < 10 && text.includes('"VIGIL_ERR_UNAVAILABLE"')) {
        await new Promise((resolve) => setTimeout(resolve, Number(res.headers.get('retry-after') ?? 1) * 1000))
        continue
      }
      if (!res.ok) throw new Error(`${method} ${route} → ${res.status} ${text}`)
      return JSON.parse(text) as T
    }
  }
  const patient = await must<{ id: string }>('POST', '/v1/patients', { displayName: 'Test Patient' })
  // Locally administered unicast MAC (02:…), random so test files never collide.
  const mac = ['02', ...Array.from(randomBytes(5), (b) => b.toString(16).padStart(2, '0'))].join(':')
  const device = await must<{ id: string }>('POST', '/v1/devices', {
    name: 'Test monitor', mac, firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2026-01-01T00:00:00Z'
  })
  await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: patient.id, validFrom: new Date(Date.now() - 3_600_000).toISOString() })
  const cred = await must<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
  return { patientId: patient.id, deviceId: device.id, password: cred.password }
}
