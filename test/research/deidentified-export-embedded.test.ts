import t from 'tap'
import { startTestVigil } from '../helpers/vigil.ts'
import { waitFor } from '../helpers/wait.ts'

// On the embedded default (PGlite: one connection), a de-identified export must finish: its
// completion audit row was once written through the pool inside the completion transaction,
// which held that one connection, so the export hung in `running` forever.
const vigil = await startTestVigil()
t.teardown(() => vigil.close())

t.test('a de-identified export finishes on embedded PGlite', async (t) => {
  const password = 'correct horse 42'
  const user = await vigil.api('POST', '/v1/users', { email: 'ml@example.org', displayName: 'Scientist', password, roles: ['ml-scientist'] })
  t.equal(user.status, 201)
  const base = `http://127.0.0.1:${vigil.httpPort}`
  const login = await fetch(`${base}/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'ml@example.org', password }) })
  const token = ((await login.json()) as { accessToken: string }).accessToken
  const started = await vigil.api<{ id: string }>('POST', '/v1/exports/deidentified', { metrics: ['heart_rate'], from: '2026-03-01T00:00:00Z', to: '2026-04-01T00:00:00Z' }, token)
  t.equal(started.status, 202)
  const done = await waitFor('export finished', async () => {
    const res = await vigil.api<{ state: string }>('GET', `/v1/exports/deidentified/${started.body.id}`, undefined, token)
    return ['succeeded', 'failed', 'cancelled'].includes(res.body.state) ? res.body : undefined
  }, 60_000)
  t.equal(done.state, 'succeeded')
  const audit = await vigil.api<{ items: Array<{ details?: { stage?: string } }> }>('GET', `/v1/audit?action=export:deidentified`)
  t.equal(audit.status, 200)
  const rows = audit.body.items
  t.ok(rows.some((r) => r.details?.stage === 'completed'), 'the completion is audited')
})
