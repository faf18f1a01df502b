import { useEffect, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import type { Session } from './api.ts'
import { age, clock } from './format.ts'
import { linkClick } from './router.ts'
import { RulesEditor } from './admin-rules.tsx'
import { PeopleAdmin } from './admin-people.tsx'
import { AuditSearch } from './admin-audit.tsx'

// The admin and integrator screens, one component per path under /admin: devices (register,
// credentials shown once, rejections), the alert rules editor and its versions, people (users,
// roles, care teams) and audit search. Each shows only what the role's permissions allow.

interface Device {
  id: string, name: string, mac: string, firmwareVersion: string, softwareVersion: string, patientId: string | null,
  presence: { connected: boolean, lastReadingAt: string | null, batteryPercent: number | null }
}
interface Rejection { id: string, reason: string, message: string, receivedAt: string, payloadBytes: number }

const SECTIONS: Array<{ path: string, label: string, permission: string }> = [
  { path: '/admin', label: 'Devices', permission: 'devices:read' },
  { path: '/admin/rules', label: 'Alert rules', permission: 'rules:read' },
  { path: '/admin/people', label: 'People', permission: 'users:admin' },
  { path: '/admin/audit', label: 'Audit', permission: 'audit:read' }
]

export function AdminPage ({ session, path }: { session: Session, path: string }) {
  const can = (p: string): boolean => session.permissions.includes(p)
  const sections = SECTIONS.filter((s) => can(s.permission))
  const current = sections.find((s) => s.path === path) ?? sections[0]
  useEffect(() => { document.title = `${current?.label ?? 'Admin'} · Vigil` }, [current?.path])
  return (
    <main id="main" class="page">
      <h1>Administration</h1>
      {sections.length > 1 && (
        <nav aria-label="Administration" class="subnav">
          {sections.map((s) => <a key={s.path} href={s.path} onClick={linkClick} aria-current={s === current ? 'page' : undefined}>{s.label}</a>)}
        </nav>
      )}
      {current === undefined ? <p>Nothing here for your role.</p>
        : current.path === '/admin/rules' ? <RulesEditor session={session} />
          : current.path === '/admin/people' ? <PeopleAdmin session={session} />
            : current.path === '/admin/audit' ? <AuditSearch />
              : <Devices session={session} />}
    </main>
  )
}

function Devices ({ session }: { session: Session }) {
  const can = (p: string): boolean => session.permissions.includes(p)
  const [devices, setDevices] = useState<Device[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  // The one-time password lives in this component's state only: gone when the screen is left.
  const [secret, setSecret] = useState<{ deviceId: string, name: string, username: string, password: string } | null>(null)
  const [copied, setCopied] = useState(false)
  const [rejections, setRejections] = useState<{ deviceId: string, items: Rejection[] } | null>(null)

  async function load (): Promise<void> {
    setDevices((await api<{ items: Device[] }>('GET', '/v1/devices?limit=1000')).items)
  }
  useEffect(() => { void load().catch(() => setError('The devices could not be loaded.')) }, [])

  async function register (event: Event): Promise<void> {
    event.preventDefault()
    const form = event.currentTarget as HTMLFormElement
    const data = Object.fromEntries(new FormData(form)) as Record<string, string>
    try {
      await api('POST', '/v1/devices', { name: data.name, mac: data.mac, firmwareVersion: data.firmwareVersion, softwareVersion: data.softwareVersion, startedAt: data.startedAt })
      form.reset()
      setError(null)
      await load()
    } catch (err) {
      setError(err instanceof ApiError ? `Not registered: ${err.message}` : 'Not registered.')
    }
  }
  async function issue (device: Device): Promise<void> {
    try {
      const credential = await api<{ username: string, password: string }>('POST', `/v1/devices/${device.id}/credentials`)
      setCopied(false)
      setSecret({ deviceId: device.id, name: device.name, ...credential })
    } catch (err) {
      setError(err instanceof ApiError ? `No credential issued: ${err.message}` : 'No credential issued.')
    }
  }
  async function showRejections (device: Device): Promise<void> {
    setRejections({ deviceId: device.id, items: (await api<{ items: Rejection[] }>('GET', `/v1/devices/${device.id}/rejections?limit=50`)).items })
  }

  return (
    <section aria-labelledby="devices-h">
      <h2 id="devices-h">Devices</h2>
      {error !== null && <p class="error" role="alert">{error}</p>}
      {secret !== null && (
        <div class="secret" role="status">
          <p><strong>MQTT credential for {secret.name}.</strong> The password is shown this once: copy it into the device now.</p>
          <dl>
            <div><dt>Username</dt><dd><code>{secret.username}</code></dd></div>
            <div><dt>Password</dt><dd><code data-testid="one-time-password">{secret.password}</code></dd></div>
          </dl>
          <div class="actions">
            <button type="button" onClick={() => { void navigator.clipboard.writeText(secret.password).then(() => setCopied(true), () => setCopied(false)) }}>
              {copied ? 'Copied' : 'Copy password'}
            </button>
            <button type="button" class="quiet" onClick={() => setSecret(null)}>Done, hide it</button>
          </div>
        </div>
      )}
      {can('devices:write') && (
        <form class="inline register" onSubmit={(e) => { void register(e) }} aria-label="Register a device">
          <label>Name <input name="name" required maxLength={100} /></label>
          <label>MAC address <input name="mac" required placeholder="02:00:00:00:00:01" /></label>
          <label>Firmware <input name="firmwareVersion" required /></label>
          <label>Software <input name="softwareVersion" required /></label>
          <label>In use since <input name="startedAt" type="date" required /></label>
          <button type="submit">Register device</button>
        </form>
      )}
      {devices === null ? <p aria-busy="true">Loading…</p> : devices.length === 0 ? <p>No devices.</p> : (
        <table class="devices-table">
          <caption class="visually-hidden">Devices</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">MAC</th><th scope="col">Versions</th><th scope="col">State</th><th scope="col">Patient</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>
            {devices.map((d) => (
              <tr key={d.id} data-device-id={d.id}>
                <td>{d.name}</td>
                <td><code>{d.mac}</code></td>
                <td>{d.firmwareVersion} / {d.softwareVersion}</td>
                <td>{d.presence.connected ? 'Connected' : d.presence.lastReadingAt === null ? 'No reading yet' : `Silent since ${age(d.presence.lastReadingAt)}`}
                  {d.presence.batteryPercent !== null && ` · battery ${Math.round(d.presence.batteryPercent)}%`}</td>
                <td>{d.patientId === null ? '—' : <a href={`/patients/${d.patientId}`} onClick={linkClick}>Patient page</a>}</td>
                <td class="actions">
                  {can('credentials:write') && <button type="button" class="small" onClick={() => { void issue(d) }} aria-label={`Issue credentials for ${d.name}`}>Issue credentials</button>}
                  <button type="button" class="small quiet" onClick={() => { void showRejections(d) }} aria-label={`Rejections of ${d.name}`}>Rejections</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {rejections !== null && (
        <section aria-labelledby="rejections-h">
          <h3 id="rejections-h">Rejected payloads</h3>
          {rejections.items.length === 0 ? <p>None.</p> : (
            <ul>{rejections.items.map((r) => <li key={r.id}><time>{clock(r.receivedAt)}</time> · <strong>{r.reason}</strong>: {r.message} ({r.payloadBytes} bytes)</li>)}</ul>
          )}
        </section>
      )}
    </section>
  )
}
