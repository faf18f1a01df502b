import { parseArgs } from 'node:util'
import { openBrowser } from '../test/helpers/browser.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { startTestVigil } from '../test/helpers/vigil.ts'

// `npm run bench:worklist`: a nurse with N patients (default 500) on her care team, each with a
// device and a set of vitals and NEWS2 scores, on the machine's PostgreSQL. Measures, over
// several page loads in Chromium:
//   api      GET /v1/worklist answered (server: N patients' alerts, latest readings, NEWS2, devices)
//   render   from the response's last byte to the first frame painted with all N rows
//   js       the compressed script the page loads (the 300 KB budget)
// The target: the worklist of 500 patients renders in under 1 s on this machine.

const { values: args } = parseArgs({
  options: {
    patients: { type: 'string', default: '500' },
    loads: { type: 'string', default: '5' },
    help: { type: 'boolean', default: false }
  }
})
if (args.help) {
  process.stdout.write('usage: npm run bench:worklist -- [--patients 500] [--loads 5]\nNeeds PostgreSQL on 127.0.0.1:5432 and /usr/bin/chromium.\n')
  process.exit(0)
}
const count = Number(args.patients)
const loads = Number(args.loads)

const db = await createTestDatabase()
const vigil = await startTestVigil({ DATABASE_URL: db.url, WORKER_THREADS: '1', API_RATE_LIMIT_PER_MINUTE: '1000000' })
const browser = await openBrowser()
try {
  async function must<T = any> (method: string, route: string, body?: unknown): Promise<T> {
    const res = await vigil.api<T>(method, route, body)
    if (res.status >= 300) throw new Error(`${method} ${route} → ${res.status} ${JSON.stringify(res.body)}`)
    return res.body
  }
  const password = 'correct horse battery 42'
  const nurse = await must<{ id: string }>('POST', '/v1/users', { email: 'bench-nurse@ward.example', displayName: 'Bench Nurse', password, roles: ['nurse'] })
  const now = Date.now()
  const started = Date.now()
  for (let i = 0; i < count; i++) {
    const { id } = await must<{ id: string }>('POST', '/v1/patients', { displayName: `Patient ${String(i).padStart(4, '0')}` })
    const mac = `02:00:00:01:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`
    const device = await must<{ id: string }>('POST', '/v1/devices', { name: 'Monitor', mac, firmwareVersion: '1', softwareVersion: '1', startedAt: '2026-01-01' })
    await must('PUT', `/v1/devices/${device.id}/assignment`, { patientId: id, validFrom: new Date(now - 86_400_000).toISOString() })
    await must('POST', '/v1/care-teams', { clinicianId: nurse.id, patientId: id })
    const base = { patientId: id, deviceId: device.id, seq: null }
    await vigil.readings.write([
      ['heart_rate', 60 + i % 70, '/min'], ['resp_rate', 12 + i % 15, '/min'], ['spo2', 90 + i % 10, '%'],
      ['bp_systolic', 95 + i % 60, 'mm[Hg]'], ['body_temp', 36 + (i % 30) / 10, 'Cel']
    ].flatMap(([metric, value, unit]) => [0, 1].map((k) => ({ ...base, metric: metric as string, value: value as number, unit: unit as string, ts: now - (k + 1) * 300_000 })))
      .concat([0, 1].map((k) => ({ ...base, metric: 'news2_score', value: (i + k) % 10, unit: '{score}', ts: now - (k + 1) * 300_000 }))))
  }
  process.stdout.write(`seeded ${count} patients in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)

  const { page } = browser
  const origin = `http://127.0.0.1:${vigil.httpPort}`
  // Through DevTools (not subject to the page's CSP): note when all rows are first painted.
  await page.addInitScript(`(() => {
    const want = ${count}
    const observer = new MutationObserver(() => {
      if (document.querySelectorAll('.worklist .row').length < want) return
      observer.disconnect()
      requestAnimationFrame(() => requestAnimationFrame(() => { window.__rowsPaintedAt = performance.now() }))
    })
    observer.observe(document, { childList: true, subtree: true })
  })()`)
  await page.goto(`${origin}/`)
  await page.getByLabel('Email').fill('bench-nurse@ward.example')
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  const samples: Array<{ api: number, render: number }> = []
  let jsBytes = 0
  for (let i = 0; i < loads; i++) {
    if (i > 0) await page.reload()
    await page.waitForFunction(() => (window as unknown as { __rowsPaintedAt?: number }).__rowsPaintedAt !== undefined, undefined, { timeout: 120_000 })
    const timing = await page.evaluate(() => {
      const entry = performance.getEntriesByType('resource').find((e) => e.name.endsWith('/v1/worklist')) as PerformanceResourceTiming
      const script = performance.getEntriesByType('resource').find((e) => /\/assets\/app-.*\.js$/.test(e.name)) as PerformanceResourceTiming | undefined
      return { api: entry.responseEnd - entry.requestStart, render: (window as unknown as { __rowsPaintedAt: number }).__rowsPaintedAt - entry.responseEnd, js: script?.transferSize ?? 0 }
    })
    if (timing.js > 0) jsBytes = timing.js
    samples.push({ api: timing.api, render: timing.render })
    process.stdout.write(`load ${i + 1}: api ${timing.api.toFixed(0)} ms, render ${timing.render.toFixed(0)} ms\n`)
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
  process.stdout.write(JSON.stringify({
    patients: count,
    loads,
    apiMedianMs: Math.round(median(samples.map((s) => s.api))),
    renderMedianMs: Math.round(median(samples.map((s) => s.render))),
    renderMaxMs: Math.round(Math.max(...samples.map((s) => s.render))),
    scriptTransferBytes: jsBytes
  }) + '\n')
} finally {
  await browser.close()
  await vigil.close()
  await db.drop()
}
