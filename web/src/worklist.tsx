import { useCallback, useEffect, useRef, useState } from 'preact/hooks'
import { api } from './api.ts'
import type { Session } from './api.ts'
import { age, metricLong, metricShort, trendOf, unitLabel } from './format.ts'
import { openAlertStream } from './live.ts'
import { linkClick } from './router.ts'
import { playCriticalTone } from './sound.ts'
import { compareUrgency } from './urgency.ts'
import type { Severity } from './urgency.ts'

export interface WorklistAlert { id: string, ruleId: string, severity: string, status: string, summary: string, openedAt: string, escalationTier: number, assignedTo: string | null }
export interface WorklistRow {
  patientId: string
  displayName: string
  reach: string
  alerts: WorklistAlert[]
  news2: { total: number, band: string, at: string, previous: number | null } | null
  vitals: Array<{ metric: string, value: number, unit: string, ts: string }>
  devices: Array<{ id: string, name: string, connected: boolean, since: string | null, lastReadingAt: string | null, batteryPercent: number | null }>
}

// Readings arrive without a stream of their own: the worklist is fetched again this often.
const POLL_MS = 10_000
const VITALS_SHOWN = ['heart_rate', 'resp_rate', 'spo2', 'bp_systolic', 'body_temp']

function facts (row: WorklistRow) {
  return {
    openSeverity: (row.alerts.find((a) => a.status === 'open')?.severity ?? null) as Severity | null,
    acknowledgedSeverity: (row.alerts.find((a) => a.status === 'acknowledged')?.severity ?? null) as Severity | null,
    news2Total: row.news2?.total ?? null,
    name: row.displayName
  }
}

export function sortByUrgency (rows: WorklistRow[]): WorklistRow[] {
  return [...rows].sort((a, b) => compareUrgency(facts(a), facts(b)))
}

export function SeverityBadge ({ severity, status }: { severity: string, status?: string }) {
  return <span class={`badge sev-${severity}`}>{severity.toUpperCase()}{status === undefined ? '' : ` · ${status}`}</span>
}

export function Worklist ({ session }: { session: Session }) {
  const [rows, setRows] = useState<WorklistRow[] | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [live, setLive] = useState(false)
  const [announcement, setAnnouncement] = useState('')
  const [banner, setBanner] = useState<string | null>(null)
  const pending = useRef<number | null>(null)
  const canAck = session.permissions.includes('alerts:ack')

  const load = useCallback(async () => {
    try {
      const result = await api<{ items: WorklistRow[] }>('GET', '/v1/worklist')
      setRows(sortByUrgency(result.items))
      setError(null)
    } catch {
      setError('The worklist could not be loaded. Retrying…')
    }
  }, [])

  useEffect(() => {
    document.title = 'Worklist · Vigil'
    void load()
    const poll = setInterval(() => { void load() }, POLL_MS)
    const close = openAlertStream((event) => {
      if (event.type === 'opened' && event.alert.severity === 'critical') {
        playCriticalTone()
        setBanner(`New critical alert: ${event.alert.summary}`)
      }
      if (event.type === 'opened' || event.type === 'severity_raised') setAnnouncement(`New ${event.alert.severity} alert: ${event.alert.summary}`)
      // Several events arrive together when a reading opens alerts: one fetch for all of them.
      if (pending.current === null) pending.current = window.setTimeout(() => { pending.current = null; void load() }, 150)
    }, setLive)
    return () => { clearInterval(poll); close(); if (pending.current !== null) clearTimeout(pending.current) }
  }, [load])

  async function acknowledge (alert: WorklistAlert): Promise<void> {
    try {
      await api('POST', `/v1/alerts/${alert.id}/acknowledge`, {})
    } catch {
      setError('The alert could not be acknowledged (it may have changed). Reloading…')
    }
    await load()
  }

  return (
    <main id="main" class="page">
      <div class="title-row">
        <h1>My patients</h1>
        <span class={`live ${live ? 'on' : 'off'}`} role="status">{live ? 'Live' : 'Reconnecting…'}</span>
      </div>
      <div class="visually-hidden" aria-live="assertive">{announcement}</div>
      {banner !== null && (
        <div class="banner critical" role="alert">
          <span>{banner}</span>
          <button type="button" class="quiet" onClick={() => setBanner(null)}>Dismiss</button>
        </div>
      )}
      {error !== null && <p class="error" role="alert">{error}</p>}
      {rows === null ? <p aria-busy="true">Loading…</p> : rows.length === 0 ? <p>No patients on your list.</p> : (
        <>
        <div class="row heading" aria-hidden="true"><span>Patient</span><span>Alerts</span><span>NEWS2</span><span>Latest vitals</span><span>Devices</span></div>
        <ul class="worklist" aria-label="Patients by urgency">
          {rows.map((row) => <Row key={row.patientId} row={row} canAck={canAck} onAck={acknowledge} />)}
        </ul>
        </>
      )}
    </main>
  )
}

function Row ({ row, canAck, onAck }: { row: WorklistRow, canAck: boolean, onAck: (a: WorklistAlert) => Promise<void> }) {
  const top = row.alerts[0]
  const level = top?.status === 'open' ? top.severity : row.news2 !== null && row.news2.band !== 'low' ? `news-${row.news2.band}` : 'none'
  const trend = row.news2 === null ? null : trendOf(row.news2.total, row.news2.previous)
  const vitals = VITALS_SHOWN.map((m) => row.vitals.find((v) => v.metric === m)).filter((v) => v !== undefined)
  return (
    <li class={`row level-${level}`} data-patient-id={row.patientId}>
      <div class="who">
        <a href={`/patients/${row.patientId}`} onClick={linkClick} class="name">{row.displayName}</a>
        {row.reach === 'break-glass' && <span class="badge glass">Break-glass access</span>}
      </div>
      <div class="alerts">
        {row.alerts.length === 0 ? <span class="muted">No open alerts</span> : row.alerts.slice(0, 3).map((a) => (
          <div class="alert-line" key={a.id}>
            <SeverityBadge severity={a.severity} status={a.status} />
            <span class="summary">{a.summary}</span>
            {a.escalationTier > 0 && <span class="muted"> · tier {a.escalationTier}</span>}
            {canAck && a.status === 'open' && (
              <button type="button" class="small" onClick={() => { void onAck(a) }} aria-label={`Acknowledge ${a.severity} alert: ${a.summary}`}>Acknowledge</button>
            )}
          </div>
        ))}
      </div>
      <div class="news2">
        {row.news2 === null ? <span class="muted">NEWS2 —</span> : (
          <span class={`news band-${row.news2.band}`} title={`NEWS2 ${trend!.words}`}>
            NEWS2 <strong>{row.news2.total}</strong> {row.news2.band} <span aria-hidden="true">{trend!.arrow}</span>
            <span class="visually-hidden">{trend!.words}</span>
          </span>
        )}
      </div>
      {vitals.length === 0 ? <p class="vitals muted">No readings</p> : (
        <dl class="vitals">
          {vitals.map((v) => (
            <div key={v.metric}>
              <dt><abbr title={metricLong(v.metric)}>{metricShort(v.metric)}</abbr></dt>
              <dd>{v.value} {unitLabel(v.unit)} <span class="age">{age(v.ts)}</span></dd>
            </div>
          ))}
        </dl>
      )}
      <div class="devices">
        {row.devices.length === 0 ? <span class="muted">No device</span> : row.devices.map((d) => (
          <div key={d.id}>
            <span class={`dot ${d.connected ? 'up' : 'down'}`} aria-hidden="true" />
            {d.connected ? 'Connected' : d.lastReadingAt === null ? 'Not connected, no reading yet' : `Silent since ${age(d.lastReadingAt)}`}
            {d.batteryPercent !== null && <span> · battery {Math.round(d.batteryPercent)}%</span>}
          </div>
        ))}
      </div>
    </li>
  )
}
