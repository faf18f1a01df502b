import { useEffect } from 'preact/hooks'
import type { Session } from './api.ts'

// The admin and integrator screens (devices, credentials shown once, rejections, rules editor,
// users and care teams, audit search) plug in here: one component per path under /admin.
export function AdminPage ({ session }: { session: Session }) {
  useEffect(() => { document.title = 'Admin · Vigil' }, [])
  const can = (p: string): boolean => session.permissions.includes(p)
  return (
    <main id="main" class="page">
      <h1>Administration</h1>
      <p>These screens are not built yet; the API serves them meanwhile (<a href="/docs">API documentation</a>).</p>
      <ul>
        {can('devices:write') && <li>Devices, credentials and rejections</li>}
        {can('rules:write') && <li>Alert rules and their versions</li>}
        {can('users:admin') && <li>Users, roles and care teams</li>}
        {can('audit:read') && <li>Audit search</li>}
      </ul>
    </main>
  )
}
