import { useEffect, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import type { Session } from './api.ts'
import { clock } from './format.ts'
import { openAlertStream } from './live.ts'
import { linkClick } from './router.ts'
import { SeverityBadge } from './worklist.tsx'

export interface Alert {
  id: string, patientId: string, ruleId: string, severity: string, status: string, summary: string,
  openedAt: string, acknowledgedBy: string | null, acknowledgedAt: string | null, assignedTo: string | null,
  resolvedAt: string | null, escalationTier: number, escalationPolicy: string | null, nextEscalationAt: string | null
}
interface Person { userId: string, displayName: string | null }
interface AlertEvent { id: string, type: string, actor: string | null, at: string, body: Record<string, unknown>, notifiedPeople?: Person[] }

const nameOf = (p: Person): string => p.displayName ?? 'a user without a name'

function describe (e: AlertEvent): string {
  const b = e.body
  if (e.type === 'opened' || e.type === 'escalated') {
    const people = e.notifiedPeople ?? []
    const reached = people.length === 0 ? 'no one reached' : `notified ${people.map(nameOf).join(', ')}`
    return `${e.type} · escalation tier ${String(b.tier ?? 0)} (${Array.isArray(b.notify) ? b.notify.join(', ') : '—'}) · ${reached}`
  }
  if (e.type === 'commented') return `comment: ${String(b.text ?? '')}`
  if (e.type === 'resolved') return `resolved (${String(b.resolution ?? '')})${b.reason === undefined ? '' : `: ${String(b.reason)}`}`
  return e.type
}

export function AlertCard ({ alert, session, onChange }: { alert: Alert, session: Session, onChange: () => void | Promise<void> }) {
  const can = (p: string): boolean => session.permissions.includes(p)
  const [events, setEvents] = useState<AlertEvent[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  // Who the alert may be assigned to, by name: loaded when the picker is first opened.
  const [assignees, setAssignees] = useState<Person[] | null>(null)
  async function loadAssignees (): Promise<void> {
    if (assignees !== null) return
    try {
      setAssignees((await api<{ items: Person[] }>('GET', `/v1/alerts/${alert.id}/assignees`)).items)
    } catch {
      setAssignees([])
    }
  }
  useEffect(() => { if (alert.assignedTo !== null && can('alerts:write')) void loadAssignees() }, [alert.assignedTo])
  async function act (path: string, body: unknown): Promise<void> {
    try {
      await api('POST', `/v1/alerts/${alert.id}/${path}`, body)
      setError(null)
      if (events !== null) await loadEvents()
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'failed')
    }
    await onChange()
  }
  async function loadEvents (): Promise<void> {
    setEvents((await api<{ items: AlertEvent[] }>('GET', `/v1/alerts/${alert.id}/events`)).items)
  }
  function submit (path: string, field: string) {
    return (event: Event) => {
      event.preventDefault()
      const form = event.currentTarget as HTMLFormElement
      const value = String(new FormData(form).get(field) ?? '').trim()
      if (value === '' && path !== 'resolve') return
      void act(path, path === 'resolve' ? (value === '' ? {} : { reason: value }) : path === 'assign' ? { userId: value } : { text: value }).then(() => form.reset())
    }
  }
  return (
    <article class={`alert-card sev-border-${alert.severity}`} aria-label={`${alert.severity} alert`}>
      <header>
        <SeverityBadge severity={alert.severity} status={alert.status} />
        <strong>{alert.summary}</strong>
      </header>
      <p class="muted">
        Opened {clock(alert.openedAt)} · rule {alert.ruleId} · escalation {alert.escalationPolicy ?? 'none'}, tier {alert.escalationTier}
        {alert.nextEscalationAt !== null && alert.status === 'open' ? ` · next tier ${clock(alert.nextEscalationAt)}` : ''}
        {alert.acknowledgedAt !== null ? ` · acknowledged ${clock(alert.acknowledgedAt)}` : ''}
        {alert.assignedTo !== null ? ` · assigned to ${assignees?.find((p) => p.userId === alert.assignedTo)?.displayName ?? 'a clinician'}` : ''}
      </p>
      <div class="actions">
        {can('alerts:ack') && alert.status === 'open' && <button type="button" onClick={() => { void act('acknowledge', {}) }}>Acknowledge</button>}
        <button type="button" class="quiet" aria-expanded={events !== null} onClick={() => { if (events === null) void loadEvents(); else setEvents(null) }}>
          {events === null ? 'Show events' : 'Hide events'}
        </button>
      </div>
      {(can('alerts:comment') || can('alerts:write')) && alert.status !== 'resolved' && (
        <form class="inline" onSubmit={submit('comments', 'text')}>
          <label>Comment <input name="text" maxLength={4000} /></label>
          <button type="submit">Add comment</button>
        </form>
      )}
      {can('alerts:write') && alert.status !== 'resolved' && (
        <>
          <form class="inline" onSubmit={submit('assign', 'userId')}>
            <label>Assign to
              <select name="userId" required onFocus={() => { void loadAssignees() }} onPointerDown={() => { void loadAssignees() }}>
                <option value="">{assignees === null ? 'Choose a clinician…' : assignees.length === 0 ? 'No clinician reaches this patient' : 'Choose a clinician…'}</option>
                {(assignees ?? []).map((p) => <option key={p.userId} value={p.userId} selected={p.userId === alert.assignedTo}>{nameOf(p)}</option>)}
              </select>
            </label>
            <button type="submit">Assign</button>
          </form>
          <form class="inline" onSubmit={submit('resolve', 'reason')}>
            <label>Resolution note <input name="reason" maxLength={1000} /></label>
            <button type="submit">Resolve</button>
          </form>
        </>
      )}
      {error !== null && <p class="error" role="alert">{error}</p>}
      {events !== null && (
        <ol class="events">
          {events.map((e) => <li key={e.id}><time>{clock(e.at)}</time> {describe(e)}</li>)}
        </ol>
      )}
    </article>
  )
}

export function AlertsPage ({ session }: { session: Session }) {
  const [alerts, setAlerts] = useState<Alert[] | null>(null)
  async function load (): Promise<void> {
    const [open, acked] = await Promise.all([
      api<{ items: Alert[] }>('GET', '/v1/alerts?status=open&limit=200'),
      api<{ items: Alert[] }>('GET', '/v1/alerts?status=acknowledged&limit=200')
    ])
    setAlerts([...open.items, ...acked.items])
  }
  useEffect(() => {
    document.title = 'Alerts · Vigil'
    void load().catch(() => setAlerts([]))
    return openAlertStream(() => { void load().catch(() => {}) }, () => {})
  }, [])
  return (
    <main id="main" class="page">
      <h1>Alerts</h1>
      {alerts === null ? <p aria-busy="true">Loading…</p> : alerts.length === 0 ? <p>No open or acknowledged alerts.</p> : alerts.map((a) => (
        <div key={a.id}>
          <a href={`/patients/${a.patientId}`} onClick={linkClick}>Patient page</a>
          <AlertCard alert={a} session={session} onChange={load} />
        </div>
      ))}
    </main>
  )
}
