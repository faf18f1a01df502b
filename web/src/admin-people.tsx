import { useEffect, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import type { Session } from './api.ts'
import { clock } from './format.ts'

// People: users (create, grant and revoke roles, deactivate), the roles there are, and care
// teams (which patients a clinician reaches). People are picked by name from lists; ids travel
// in request bodies and /v1 paths only, never in the page's URL.

export interface User { id: string, email: string | null, displayName: string | null, active: boolean, roles: string[], canLogIn: boolean }
export interface Role { id: string, name: string, category: string, permissions: string[], builtin: boolean }
interface PatientRow { id: string, displayName: string }
interface Assignment { id: string, clinicianId: string, patientId: string, validFrom: string, validTo: string | null }

export async function loadUsers (): Promise<User[]> {
  const all: User[] = []
  let cursor: string | null = null
  do {
    const page: { items: User[], nextCursor: string | null } = await api('GET', `/v1/users?limit=1000${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    all.push(...page.items)
    cursor = page.nextCursor
  } while (cursor !== null && all.length < 10_000)
  return all
}

export async function loadPatients (): Promise<PatientRow[]> {
  return (await api<{ items: PatientRow[] }>('GET', '/v1/patients?limit=1000')).items
}

export function PeopleAdmin ({ session }: { session: Session }) {
  const can = (p: string): boolean => session.permissions.includes(p)
  const [users, setUsers] = useState<User[] | null>(null)
  const [roles, setRoles] = useState<Role[]>([])
  const [error, setError] = useState<string | null>(null)
  const [notice, setNotice] = useState<string | null>(null)

  async function load (): Promise<void> {
    const [u, r] = await Promise.all([loadUsers(), can('roles:admin') ? api<{ items: Role[] }>('GET', '/v1/roles') : Promise.resolve({ items: [] })])
    // Patients are users too; they are managed from their record, not here.
    setUsers(u.filter((x) => !x.roles.includes('patient')))
    setRoles(r.items)
  }
  useEffect(() => { void load().catch(() => setError('The users could not be loaded.')) }, [])

  async function run (what: () => Promise<unknown>, done: string): Promise<boolean> {
    try {
      await what()
      setError(null)
      setNotice(done)
      await load()
      return true
    } catch (err) {
      setNotice(null)
      setError(err instanceof ApiError ? err.message : 'That did not work.')
      return false
    }
  }
  const roleName = (id: string): string => roles.find((r) => r.id === id)?.name ?? id
  const nameOf = (u: User): string => u.displayName ?? u.email ?? 'unnamed user'

  async function create (event: Event): Promise<void> {
    event.preventDefault()
    const form = event.currentTarget as HTMLFormElement
    const data = Object.fromEntries(new FormData(form)) as Record<string, string>
    if (await run(() => api('POST', '/v1/users', { email: data.email, displayName: data.displayName, password: data.password, roles: data.role === '' ? [] : [data.role] }), `${data.displayName} can now sign in.`)) form.reset()
  }
  async function createRole (event: Event): Promise<void> {
    event.preventDefault()
    const form = event.currentTarget as HTMLFormElement
    const data = new FormData(form)
    const name = String(data.get('name') ?? '').trim()
    const permissions = data.getAll('permission').map(String)
    if (await run(() => api('POST', '/v1/roles', { name, category: String(data.get('category')), permissions }), `The role ${name} was created.`)) form.reset()
  }
  // The permissions a custom role may hold: every one some role holds (the builtin roles hold them all).
  const allPermissions = [...new Set(roles.flatMap((r) => r.permissions))].sort()
  function grant (user: User) {
    return (event: Event) => {
      event.preventDefault()
      const roleId = String(new FormData(event.currentTarget as HTMLFormElement).get('roleId') ?? '')
      if (roleId !== '') void run(() => api('PUT', `/v1/users/${user.id}/roles/${roleId}`), `${nameOf(user)} now holds ${roleName(roleId)}.`)
    }
  }

  if (users === null) return error === null ? <p aria-busy="true">Loading…</p> : <p class="error" role="alert">{error}</p>
  return (
    <>
      <section aria-labelledby="users-h">
        <h2 id="users-h">Users</h2>
        {notice !== null && <p role="status" class="saved">{notice}</p>}
        {error !== null && <p class="error" role="alert">{error}</p>}
        <form class="inline register" onSubmit={(e) => { void create(e) }} aria-label="Add a user">
          <label>Name <input name="displayName" required maxLength={200} autocomplete="off" /></label>
          <label>Email <input name="email" type="email" required autocomplete="off" /></label>
          <label>Initial password <input name="password" type="password" required minLength={12} autocomplete="new-password" /></label>
          <label>Role
            <select name="role">
              <option value="">None</option>
              {roles.filter((r) => r.category !== 'patient').map((r) => <option key={r.id} value={r.id}>{r.name}</option>)}
            </select>
          </label>
          <button type="submit">Add user</button>
        </form>
        <table class="devices-table users-table">
          <caption class="visually-hidden">Users</caption>
          <thead><tr><th scope="col">Name</th><th scope="col">Email</th><th scope="col">Roles</th><th scope="col">State</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>
            {users.map((u) => (
              <tr key={u.id} data-user-id={u.id}>
                <td>{nameOf(u)}</td>
                <td>{u.email ?? '—'}</td>
                <td>
                  <ul class="chips">
                    {u.roles.map((r) => (
                      <li key={r}>{roleName(r)}
                        {can('roles:admin') && <button type="button" class="small quiet" aria-label={`Revoke ${roleName(r)} from ${nameOf(u)}`}
                          onClick={() => { void run(() => api('DELETE', `/v1/users/${u.id}/roles/${r}`), `${nameOf(u)} no longer holds ${roleName(r)}.`) }}>×</button>}
                      </li>
                    ))}
                  </ul>
                </td>
                <td>{u.active ? 'Active' : 'Deactivated'}</td>
                <td class="actions">
                  {can('roles:admin') && u.active && (
                    <form class="inline" onSubmit={grant(u)} aria-label={`Grant a role to ${nameOf(u)}`}>
                      <label><span class="visually-hidden">Role for {nameOf(u)}</span>
                        <select name="roleId">
                          <option value="">Grant a role…</option>
                          {roles.filter((r) => !u.roles.includes(r.id) && r.category !== 'patient').map((r) => <option key={r.id} value={r.id}>{r.name}</option>)}
                        </select>
                      </label>
                      <button type="submit" class="small">Grant</button>
                    </form>
                  )}
                  {u.active && u.id !== session.userId && (
                    <button type="button" class="small quiet" aria-label={`Deactivate ${nameOf(u)}`}
                      onClick={() => { void run(() => api('DELETE', `/v1/users/${u.id}`), `${nameOf(u)} is deactivated.`) }}>Deactivate</button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
      {can('roles:admin') && (
        <section aria-labelledby="roles-h">
          <h2 id="roles-h">Roles</h2>
          <table class="devices-table">
            <caption class="visually-hidden">Roles</caption>
            <thead><tr><th scope="col">Role</th><th scope="col">Reaches</th><th scope="col">Permissions</th></tr></thead>
            <tbody>
              {roles.map((r) => (
                <tr key={r.id}>
                  <td>{r.name}{r.builtin ? '' : ' (custom)'}</td>
                  <td>{({ admin: 'every patient', clinician: 'care team and break-glass', patient: 'themselves' } as Record<string, string>)[r.category] ?? 'no patient'}</td>
                  <td class="permissions">{r.permissions.join(', ')}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <form class="role-form" onSubmit={(e) => { void createRole(e) }} aria-label="Create a role">
            <label>Role name <input name="name" required maxLength={200} autocomplete="off" /></label>
            <label>Reaches
              <select name="category">
                <option value="clinician">care team and break-glass</option>
                <option value="admin">every patient</option>
                <option value="developer">no patient (developer)</option>
                <option value="integrator">no patient (device integrator)</option>
                <option value="research">no patient (research)</option>
              </select>
            </label>
            <fieldset>
              <legend>Permissions</legend>
              {allPermissions.map((p) => <label key={p} class="permission"><input type="checkbox" name="permission" value={p} /> {p}</label>)}
            </fieldset>
            <button type="submit">Create role</button>
          </form>
        </section>
      )}
      {can('care-teams:write') && <CareTeams users={users} roles={roles} />}
    </>
  )
}

function CareTeams ({ users, roles }: { users: User[], roles: Role[] }) {
  const clinicalRoles = new Set(roles.filter((r) => r.category === 'clinician').map((r) => r.id))
  const clinicians = users.filter((u) => u.active && u.roles.some((r) => clinicalRoles.has(r)))
  const [clinicianId, setClinicianId] = useState<string>('')
  const [patients, setPatients] = useState<PatientRow[]>([])
  const [assignments, setAssignments] = useState<Assignment[] | null>(null)
  const [error, setError] = useState<string | null>(null)

  useEffect(() => { void loadPatients().then(setPatients, () => setError('The patients could not be loaded.')) }, [])
  async function load (id: string): Promise<void> {
    setAssignments(id === '' ? null : (await api<{ items: Assignment[] }>('GET', `/v1/care-teams?clinicianId=${id}`)).items)
  }
  useEffect(() => { void load(clinicianId).catch(() => setError('The care team could not be loaded.')) }, [clinicianId])
  const patientName = (id: string): string => patients.find((p) => p.id === id)?.displayName ?? 'a patient'
  const now = Date.now()
  const current = (a: Assignment): boolean => Date.parse(a.validFrom) <= now && (a.validTo === null || Date.parse(a.validTo) > now)

  async function add (event: Event): Promise<void> {
    event.preventDefault()
    const form = event.currentTarget as HTMLFormElement
    const patientId = String(new FormData(form).get('patientId') ?? '')
    if (patientId === '') return
    try {
      await api('POST', '/v1/care-teams', { clinicianId, patientId })
      setError(null)
      form.reset()
      await load(clinicianId)
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'Not added.')
    }
  }
  async function end (a: Assignment): Promise<void> {
    try {
      await api('DELETE', `/v1/care-teams/${a.id}`)
      await load(clinicianId)
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'Not ended.')
    }
  }

  return (
    <section aria-labelledby="teams-h">
      <h2 id="teams-h">Care teams</h2>
      <label class="picker">Clinician
        <select value={clinicianId} onChange={(e) => setClinicianId((e.currentTarget as HTMLSelectElement).value)}>
          <option value="">Choose a clinician…</option>
          {clinicians.map((u) => <option key={u.id} value={u.id}>{u.displayName ?? u.email}</option>)}
        </select>
      </label>
      {error !== null && <p class="error" role="alert">{error}</p>}
      {assignments !== null && (
        <>
          <form class="inline" onSubmit={(e) => { void add(e) }} aria-label="Add a patient to this care team">
            <label>Patient
              <select name="patientId" required>
                <option value="">Choose a patient…</option>
                {patients.filter((p) => !assignments.some((a) => a.patientId === p.id && current(a))).map((p) => <option key={p.id} value={p.id}>{p.displayName}</option>)}
              </select>
            </label>
            <button type="submit">Add to care team</button>
          </form>
          {assignments.length === 0 ? <p>No patients on this clinician's care team.</p> : (
            <table class="devices-table care-team">
              <caption class="visually-hidden">Care-team assignments</caption>
              <thead><tr><th scope="col">Patient</th><th scope="col">From</th><th scope="col">Until</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
              <tbody>
                {assignments.map((a) => (
                  <tr key={a.id}>
                    <td>{patientName(a.patientId)}</td>
                    <td>{clock(a.validFrom)}</td>
                    <td>{a.validTo === null ? 'open-ended' : clock(a.validTo)}</td>
                    <td>{current(a) && <button type="button" class="small quiet" aria-label={`End now: care of ${patientName(a.patientId)}`} onClick={() => { void end(a) }}>End now</button>}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  )
}
