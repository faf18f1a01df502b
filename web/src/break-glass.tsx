import { useEffect, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'

// Break-glass grants: patient id → expiry, as the server last said (GET /v1/me/break-glass),
// so the time left survives a reload. Memory only, never browser storage.
const grants = new Map<string, number>()

export function breakGlassExpiry (patientId: string): number | null {
  const until = grants.get(patientId)
  return until === undefined || until <= Date.now() ? null : until
}

/** The caller's unexpired grants from the server. */
async function loadGrants (): Promise<void> {
  const body = await api<{ items: Array<{ patientId: string, expiresAt: string }> }>('GET', '/v1/me/break-glass')
  grants.clear()
  for (const g of body.items) grants.set(g.patientId, Date.parse(g.expiresAt))
}

/** The form on a patient page the clinician cannot see: reason required, then the page opens. */
export function BreakGlassForm ({ patientId, onGranted }: { patientId: string, onGranted: () => void }) {
  const [error, setError] = useState<string | null>(null)
  async function submit (event: Event): Promise<void> {
    event.preventDefault()
    const reason = String(new FormData(event.currentTarget as HTMLFormElement).get('reason') ?? '').trim()
    try {
      const grant = await api<{ expiresAt: string }>('POST', `/v1/patients/${patientId}/break-glass`, { reason })
      grants.set(patientId, Date.parse(grant.expiresAt))
      onGranted()
    } catch (err) {
      setError(err instanceof ApiError && err.code === 'VIGIL_ERR_VALIDATION' ? 'Give a fuller reason.'
        : err instanceof ApiError && err.code === 'VIGIL_ERR_BREAK_GLASS_LIMIT' ? 'You have used your break-glass grants for this hour.'
          : 'Access was not granted.')
    }
  }
  return (
    <section aria-labelledby="glass-h" class="glass-form">
      <h2 id="glass-h">Emergency access (break-glass)</h2>
      <p>If this patient exists and needs you now, you can open their data for a limited time. Your reason and everything you open are recorded and reviewed.</p>
      <form onSubmit={(e) => { void submit(e) }}>
        <label>Reason <textarea name="reason" required minLength={10} maxLength={500} rows={3} /></label>
        {error !== null && <p class="error" role="alert">{error}</p>}
        <button type="submit">Open with break-glass</button>
      </form>
    </section>
  )
}

/** "Break-glass access, N min left", on the patient page while a grant runs (the server's expiry). */
export function BreakGlassBanner ({ patientId, canBreakGlass }: { patientId: string, canBreakGlass: boolean }) {
  const [, tick] = useState(0)
  useEffect(() => {
    if (canBreakGlass) void loadGrants().then(() => tick((n) => n + 1), () => {})
    const timer = setInterval(() => tick((n) => n + 1), 15_000)
    return () => clearInterval(timer)
  }, [patientId, canBreakGlass])
  const until = breakGlassExpiry(patientId)
  if (until === null) return null
  const minutes = Math.max(1, Math.ceil((until - Date.now()) / 60_000))
  return <p class="banner glass" role="status">Break-glass access: {minutes} min left. Everything you open is audited with your reason.</p>
}
