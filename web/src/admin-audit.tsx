import { useEffect, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import { clock } from './format.ts'
import { loadPatients, loadUsers } from './admin-people.tsx'
import type { User } from './admin-people.tsx'

// Audit search: by person (who acted), patient, action, outcome and time range, newest first,
// a page at a time. People and patients are picked by name; the filter lives in this screen's
// state and reaches the API as ids (GET /v1/audit), so no name is ever in a URL.

interface AuditRow {
  id: string, at: string, actorId: string | null, actorKind: string, role: string | null, patientId: string | null,
  action: string, fields: string[], outcome: string, breakGlassReason: string | null
}
interface Filter { actorId: string, patientId: string, action: string, outcome: string, from: string, to: string }

// Actions the audit log records (access/, api/routes/): offered as suggestions, any text is allowed.
const ACTIONS = [
  'patients:read', 'patients:list', 'patients:search', 'patients:write', 'phi:read', 'phi:write', 'readings:read', 'worklist:read',
  'alerts:read', 'break-glass', 'care-team:read', 'on-call:read', 'on-call:write', 'devices:read', 'devices:assign',
  'credentials:issue', 'rejections:read', 'rules:read', 'overrides:write', 'voice-notes:read', 'voice-notes:write', 'export:deidentified'
]
const PAGE = 50

export function AuditSearch () {
  const [users, setUsers] = useState<User[]>([])
  const [patients, setPatients] = useState<Array<{ id: string, displayName: string }>>([])
  const [filter, setFilter] = useState<Filter | null>(null)
  // Cursors of the pages before this one, for "Newer"; the current page's own cursor.
  const [trail, setTrail] = useState<Array<string | null>>([])
  const [cursor, setCursor] = useState<string | null>(null)
  const [result, setResult] = useState<{ items: AuditRow[], nextCursor: string | null } | null>(null)
  const [error, setError] = useState<string | null>(null)

  useEffect(() => {
    void loadUsers().then(setUsers, () => {})
    void loadPatients().then(setPatients, () => {})
  }, [])

  async function run (f: Filter, at: string | null): Promise<void> {
    const q = new URLSearchParams({ limit: String(PAGE) })
    if (f.actorId !== '') q.set('actorId', f.actorId)
    if (f.patientId !== '') q.set('patientId', f.patientId)
    if (f.action.trim() !== '') q.set('action', f.action.trim())
    if (f.outcome !== '') q.set('outcome', f.outcome)
    if (f.from !== '') q.set('from', new Date(f.from).toISOString())
    if (f.to !== '') q.set('to', new Date(f.to).toISOString())
    if (at !== null) q.set('cursor', at)
    try {
      setResult(await api('GET', `/v1/audit?${q.toString()}`))
      setError(null)
    } catch (err) {
      setError(err instanceof ApiError ? `No results: ${err.message}` : 'The search failed.')
    }
  }
  function search (event: Event): void {
    event.preventDefault()
    const data = Object.fromEntries(new FormData(event.currentTarget as HTMLFormElement)) as unknown as Filter
    if (data.from !== '' && data.to !== '' && Date.parse(data.from) >= Date.parse(data.to)) {
      setError('"From" must be before "to".')
      return
    }
    setFilter(data)
    setTrail([])
    setCursor(null)
    void run(data, null)
  }
  function older (): void {
    if (filter === null || result?.nextCursor == null) return
    setTrail([...trail, cursor])
    setCursor(result.nextCursor)
    void run(filter, result.nextCursor)
  }
  function newer (): void {
    if (filter === null || trail.length === 0) return
    const previous = trail[trail.length - 1]!
    setTrail(trail.slice(0, -1))
    setCursor(previous)
    void run(filter, previous)
  }

  const userName = (id: string | null, kind: string): string => {
    if (id === null) return 'system'
    if (kind === 'token') return 'API token'
    return users.find((u) => u.id === id)?.displayName ?? (patients.find((p) => p.id === id)?.displayName ?? 'unknown user')
  }
  const patientName = (id: string | null): string => id === null ? '—' : patients.find((p) => p.id === id)?.displayName ?? 'a patient'

  return (
    <section aria-labelledby="audit-h">
      <h2 id="audit-h">Audit search</h2>
      <form class="inline audit-filter" onSubmit={search} aria-label="Search the audit log">
        <label>Person
          <select name="actorId">
            <option value="">Anyone</option>
            {users.map((u) => <option key={u.id} value={u.id}>{u.displayName ?? u.email}</option>)}
          </select>
        </label>
        <label>Patient
          <select name="patientId">
            <option value="">Any patient</option>
            {patients.map((p) => <option key={p.id} value={p.id}>{p.displayName}</option>)}
          </select>
        </label>
        <label>Action
          <input name="action" list="audit-actions" maxLength={64} autocomplete="off" />
          <datalist id="audit-actions">{ACTIONS.map((a) => <option key={a} value={a} />)}</datalist>
        </label>
        <label>Outcome
          <select name="outcome">
            <option value="">Any</option>
            <option value="allowed">Allowed</option>
            <option value="denied">Denied</option>
          </select>
        </label>
        <label>From <input name="from" type="datetime-local" /></label>
        <label>To <input name="to" type="datetime-local" /></label>
        <button type="submit">Search</button>
      </form>
      {error !== null && <p class="error" role="alert">{error}</p>}
      {result !== null && (
        <>
          <p role="status" class="muted">{result.items.length === 0 ? 'No audit rows match.' : `Rows ${trail.length * PAGE + 1}–${trail.length * PAGE + result.items.length}, newest first.`}</p>
          {result.items.length > 0 && (
            <table class="devices-table audit-table">
              <caption class="visually-hidden">Audit rows</caption>
              <thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Action</th><th scope="col">Patient</th><th scope="col">Outcome</th><th scope="col">Fields</th></tr></thead>
              <tbody>
                {result.items.map((r) => (
                  <tr key={r.id}>
                    <td>{clock(r.at)}</td>
                    <td>{userName(r.actorId, r.actorKind)}</td>
                    <td><code>{r.action}</code>{r.breakGlassReason !== null && <span class="badge glass">Break-glass</span>}</td>
                    <td>{patientName(r.patientId)}</td>
                    <td>{r.outcome === 'denied' ? <strong>Denied</strong> : 'Allowed'}</td>
                    <td>{r.fields.join(', ') || '—'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <div class="actions">
            <button type="button" class="quiet" disabled={trail.length === 0} onClick={newer}>Newer</button>
            <button type="button" class="quiet" disabled={result.nextCursor === null} onClick={older}>Older</button>
          </div>
        </>
      )}
    </section>
  )
}
