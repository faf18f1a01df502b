import type { TestVigil } from '../helpers/vigil.ts'

export interface WardPatient { id: string, name: string, deviceId: string, devicePassword: string }

export interface Ward {
  nurse: { id: string, email: string, password: string }
  admin: { id: string, email: string, password: string }
  /** On the nurse's care team, with a device that will deteriorate. */
  mine: WardPatient
  /** On the nurse's care team, nothing happening. */
  quiet: WardPatient
  /** Not on her team. */
  other: WardPatient
}

/** A nurse, two patients on her care team and one not, each with a monitor (over the admin API). */
export async function seedWard (vigil: TestVigil, tag = Math.random().toString(36).slice(2, 8)): Promise<Ward> {
  async function must<T = any> (method: string, route: string, body?: unknown): Promise<T> {
    let res = await vigil.api<T>(method, route, body)
    // A busy machine can make a fresh process shed load (503 before any work is done): retry
    // that a few times, as Retry-After asks (as test/helpers/provision.ts does), never anything else.
    for (let attempt = 1; res.status === 503 && attempt < 10 && (res.body as { code?: string }).code === 'VIGIL_ERR_UNAVAILABLE'; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 5000))
      res = await vigil.api<T>(method, route, body)
    }
    if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
    return res.body
  }
  let mac = Math.floor(Math.random() * 0xffff)
  async function patient (name: string): Promise<WardPatient> {
    const { id } = await must<{ id: string }>('POST', '/v1/patients', { displayName: name })
    mac++
    const device = await must<{ id: string }>('POST', '/v1/devices', {
      name: 'Bedside monitor', mac: `02:00:00:00:${(mac >> 8 & 0xff).toString(16).padStart(2, '0')}:${(mac & 0xff).toString(16).padStart(2, '0')}`,
      firmwareVersion: '1.0', softwareVersion: '1.0', startedAt: '2026-01-01'
    })
    await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: id, validFrom: new Date(Date.now() - 3_600_000).toISOString() })
    const { password } = await must<{ password: string }>('POST', `/v1/devices/${device.id}/credentials`)
    return { id, name, deviceId: device.id, devicePassword: password }
  }
  const password = 'correct horse battery 42'
  const email = `nurse-${tag}@ward.example`
  const nurse = await must<{ id: string }>('POST', '/v1/users', { email, displayName: `Nurse ${tag}`, password, roles: ['nurse'] })
  const adminEmail = `admin-${tag}@ward.example`
  const admin = await must<{ id: string }>('POST', '/v1/users', { email: adminEmail, displayName: `Admin ${tag}`, password, roles: ['admin'] })
  const mine = await patient(`Ada Lovelace ${tag}`)
  const quiet = await patient(`Grace Hopper ${tag}`)
  const other = await patient(`Edsger Dijkstra ${tag}`)
  for (const p of [mine, quiet]) await must('POST', '/v1/care-teams', { clinicianId: nurse.id, patientId: p.id })
  return { nurse: { id: nurse.id, email, password }, admin: { id: admin.id, email: adminEmail, password }, mine, quiet, other }
}
