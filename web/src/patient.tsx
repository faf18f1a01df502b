import { useEffect, useMemo, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import type { Session } from './api.ts'
import { VitalChart } from './chart.tsx'
import type { Marker } from './chart.tsx'
import { clock, metricLong } from './format.ts'
import { AlertCard } from './alerts.tsx'
import { openAlertStream } from './live.ts'
import type { Alert } from './alerts.tsx'
import { NotFound } from './not-found.tsx'
import { BreakGlassBanner, BreakGlassForm } from './break-glass.tsx'

interface Reading { metric: string, value: number, unit: string, ts: string }
interface Rule { id: string, kind: string, metric?: string, above?: number | null, below?: number | null }
interface VoiceNote { id: string, createdAt: string, transcript: string | null, state: string, durationMs: number }

const CHART_ORDER = ['news2_score', 'resp_rate', 'spo2', 'o2_supplemental', 'bp_systolic', 'bp_diastolic', 'heart_rate', 'consciousness', 'body_temp']
const RANGES = [['6h', 6], ['24h', 24], ['7d', 168]] as const
const HOUR = 3_600_000
// A chart is a screen, not an export: at most this many readings per range.
const MAX_PAGES = 10

export function PatientPage ({ patientId, session }: { patientId: string, session: Session }) {
  const can = (p: string): boolean => session.permissions.includes(p)
  const [name, setName] = useState<string | null | undefined>(undefined)
  const [range, setRange] = useState<{ key: string, from: number, to: number }>(() => ({ key: '6h', from: Date.now() - 6 * HOUR, to: Date.now() + 60_000 }))
  const [readings, setReadings] = useState<Reading[] | null>(null)
  const [alerts, setAlerts] = useState<Alert[]>([])
  const [rules, setRules] = useState<Rule[]>([])
  const [notes, setNotes] = useState<VoiceNote[]>([])
  const [record, setRecord] = useState<unknown>(undefined)
  const [recordError, setRecordError] = useState<string | null>(null)
  const [reload, setReload] = useState(0)

  useEffect(() => {
    document.title = 'Patient · Vigil'
    api<{ displayName: string }>('GET', `/v1/patients/${patientId}`).then((p) => setName(p.displayName), (err) => {
      if (err instanceof ApiError && (err.status === 404 || err.status === 400)) setName(null)
    })
    if (can('rules:read')) api<{ rules: Rule[] }>('GET', '/v1/alert-rules?limit=1').then((r) => setRules(r.rules), () => {})
    if (can('voice-notes:read')) api<{ items: VoiceNote[] }>('GET', `/v1/patients/${patientId}/voice-notes?limit=50`).then((r) => setNotes(r.items), () => {})
  }, [patientId, reload])

  async function loadAlerts (): Promise<void> {
    if (!can('alerts:read')) return
    const page = await api<{ items: Alert[] }>('GET', `/v1/alerts?patientId=${patientId}&limit=100`).catch(() => ({ items: [] }))
    setAlerts(page.items)
  }

  // An alert that opens, escalates or changes hands while the page is open shows at once: the
  // alert stream names the patient, and only this patient's events fetch the list again.
  useEffect(() => {
    if (name === null || name === undefined || !can('alerts:read')) return
    return openAlertStream((event) => { if (event.alert.patientId === patientId) void loadAlerts() }, () => {})
  }, [name, patientId])

  useEffect(() => {
    if (name === null || name === undefined) return
    let cancelled = false
    void (async () => {
      const all: Reading[] = []
      let cursor: string | null = null
      for (let i = 0; i < MAX_PAGES; i++) {
        const q = new URLSearchParams({ from: new Date(range.from).toISOString(), to: new Date(range.to).toISOString(), limit: '1000' })
        if (cursor !== null) q.set('cursor', cursor)
        const page: { items: Reading[], nextCursor: string | null } = await api('GET', `/v1/patients/${patientId}/readings?${q}`)
        all.push(...page.items)
        cursor = page.nextCursor
        if (cursor === null) break
      }
      if (!cancelled) setReadings(all)
    })().catch(() => { if (!cancelled) setReadings([]) })
    void loadAlerts()
    return () => { cancelled = true }
  }, [name, range])

  const byMetric = useMemo(() => {
    const map = new Map<string, { unit: string, points: Array<[number, number]> }>()
    for (const r of readings ?? []) {
      const entry = map.get(r.metric) ?? { unit: r.unit, points: [] }
      entry.points.push([Date.parse(r.ts), r.value])
      map.set(r.metric, entry)
    }
    for (const entry of map.values()) entry.points.sort((a, b) => a[0] - b[0])
    // NEWS2 history first, then the vitals in the order of the NEWS2 chart, then the rest by name.
    const rank = (m: string): number => { const i = CHART_ORDER.indexOf(m); return i === -1 ? CHART_ORDER.length : i }
    return [...map.entries()].sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b))
  }, [readings])

  const markers = useMemo(() => {
    const list: Marker[] = []
    for (const a of alerts) {
      list.push({ at: Date.parse(a.openedAt), label: `opened ${a.summary}`, kind: 'opened' })
      if (a.acknowledgedAt !== null) list.push({ at: Date.parse(a.acknowledgedAt), label: 'acknowledged', kind: 'acknowledged' })
    }
    for (const n of notes) list.push({ at: Date.parse(n.createdAt), label: 'voice note', kind: 'note' })
    return list
  }, [alerts, notes])

  const thresholdsOf = useMemo(() => (metric: string) => rules
    .filter((r) => r.kind === 'threshold' && r.metric === metric)
    .flatMap((r) => [
      ...(typeof r.above !== 'number' ? [] : [{ value: r.above, label: `above ${r.above} (${r.id})` }]),
      ...(typeof r.below !== 'number' ? [] : [{ value: r.below, label: `below ${r.below} (${r.id})` }])
    ]), [rules])

  if (name === null) {
    const canBreakGlass = can('break-glass') && session.patientScopes.includes('care-team')
    return (
      <>
        <NotFound what="patient" />
        {canBreakGlass && <div class="page"><BreakGlassForm patientId={patientId} onGranted={() => { setName(undefined); setReload((n) => n + 1) }} /></div>}
      </>
    )
  }
  if (name === undefined) return <main id="main" class="page" aria-busy="true">Loading…</main>

  function pick (key: string, hours: number): void {
    const to = Date.now() + 60_000
    setRange({ key, from: to - hours * HOUR, to })
  }
  function custom (event: Event): void {
    event.preventDefault()
    const data = new FormData(event.currentTarget as HTMLFormElement)
    const from = Date.parse(String(data.get('from')))
    const to = Date.parse(String(data.get('to')))
    if (Number.isFinite(from) && Number.isFinite(to) && from < to) setRange({ key: 'custom', from, to })
  }
  async function showRecord (): Promise<void> {
    try {
      setRecord(await api('GET', `/v1/patients/${patientId}/record`))
      setRecordError(null)
    } catch (err) {
      setRecordError(err instanceof ApiError && err.code === 'VIGIL_ERR_NOT_FOUND' ? 'No record has been written for this patient.' : 'The record could not be shown.')
    }
  }

  return (
    <main id="main" class="page">
      <h1>{name}</h1>
      <BreakGlassBanner patientId={patientId} canBreakGlass={can('break-glass') && session.patientScopes.includes('care-team')} />
      <section aria-labelledby="range-h">
        <h2 id="range-h" class="visually-hidden">Time range</h2>
        <div class="ranges" role="group" aria-label="Time range">
          {RANGES.map(([key, hours]) => (
            <button type="button" key={key} aria-pressed={range.key === key} onClick={() => pick(key, hours)}>{key}</button>
          ))}
          <form class="custom" onSubmit={custom}>
            <label>From <input type="datetime-local" name="from" required /></label>
            <label>To <input type="datetime-local" name="to" required /></label>
            <button type="submit" aria-pressed={range.key === 'custom'}>Show</button>
          </form>
        </div>
      </section>
      {alerts.some((a) => a.status !== 'resolved') && (
        <section aria-labelledby="alerts-h">
          <h2 id="alerts-h">Alerts</h2>
          {alerts.filter((a) => a.status !== 'resolved').map((a) => <AlertCard key={a.id} alert={a} session={session} onChange={loadAlerts} />)}
        </section>
      )}
      <section aria-labelledby="charts-h">
        <h2 id="charts-h">Vitals {range.key === 'custom' ? `${clock(new Date(range.from).toISOString())} – ${clock(new Date(range.to).toISOString())}` : `(last ${range.key})`}</h2>
        {readings === null ? <p aria-busy="true">Loading readings…</p> : byMetric.length === 0 ? <p>No readings in this range.</p> : (
          <div class="charts">
            {byMetric.map(([metric, { unit, points }]) => (
              <VitalChart key={metric} metric={metric} unit={unit} points={points} from={range.from} to={range.to} thresholds={thresholdsOf(metric)} markers={markers} />
            ))}
          </div>
        )}
      </section>
      {can('voice-notes:read') && (
        <section aria-labelledby="notes-h">
          <h2 id="notes-h">Voice notes</h2>
          {notes.length === 0 ? <p class="muted">No voice notes.</p> : (
            <ul class="notes">
              {notes.map((n) => <li key={n.id}><time>{clock(n.createdAt)}</time> · {Math.round(n.durationMs / 1000)} s · {n.transcript ?? `(${n.state})`}</li>)}
            </ul>
          )}
        </section>
      )}
      {can('phi:read') && (
        <section aria-labelledby="record-h">
          <h2 id="record-h">Record</h2>
          <p class="muted">Opening the record is recorded in the audit log.</p>
          {record === undefined
            ? <button type="button" onClick={() => { void showRecord() }}>Show record</button>
            : <pre class="record">{JSON.stringify(record, null, 2)}</pre>}
          {recordError !== null && <p class="error">{recordError}</p>}
        </section>
      )}
      <p class="muted">Metrics: {byMetric.map(([m]) => metricLong(m)).join(', ') || 'none'}</p>
    </main>
  )
}
