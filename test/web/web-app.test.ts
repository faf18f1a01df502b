import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { artifactsDir, openBrowserBeside, screenshot, seriousAxeViolations } from '../helpers/browser.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { seedWard } from './ward.ts'

// The web app against the whole service as `npm start` runs it (embedded PGlite, real MQTT,
// the alert engine's worker thread) in Debian's Chromium: a nurse's day, start to finish.

// One long scenario on a shared 2-core machine: a browser, PGlite and a worker thread at once.
t.setTimeout(600_000)

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-web-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
await fs.writeFile(rulesPath, `
escalationPolicies:
  - id: standard
    tiers:
      - { notify: [nurse], escalateAfter: 5m }
      - { notify: [doctor], escalateAfter: 10m }
rules:
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical, escalation: standard }
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical } }
`)
// Chromium starts while Vigil does.
const [vigil, browser] = await openBrowserBeside(startTestVigil({ VIGIL_ALERT_RULES: rulesPath, WORKER_THREADS: '1' }))
t.teardown(async () => {
  await browser.close()
  await vigil.close()
  await fs.rm(dir, { recursive: true, force: true })
})
const base = `http://127.0.0.1:${vigil.httpPort}`
const ward = await seedWard(vigil)
const { page } = browser

t.test('a nurse signs in, sees only her patients, and a deteriorating patient rises to the top without a reload', async (t) => {
  const response = await page.goto(`${base}/`)
  t.equal(response?.headers()['cache-control'], 'no-store')
  t.match(response?.headers()['content-security-policy'], /script-src 'self'/)
  t.notMatch(response?.headers()['content-security-policy'], /unsafe-inline|unsafe-eval/)
  await page.getByLabel('Email').fill(ward.nurse.email)
  await page.getByLabel('Password').fill(ward.nurse.password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('heading', { name: 'My patients' }).waitFor()
  await page.locator('.live.on').waitFor()
  await page.locator('.worklist .row').nth(1).waitFor()

  const names = await page.locator('.worklist .name').allTextContents()
  t.same(names.sort(), [ward.mine.name, ward.quiet.name].sort(), 'her care team, and no one else')
  t.notOk((await page.content()).includes(ward.other.name), 'the off-team patient is nowhere in the page')

  // The session is an HttpOnly SameSite=Strict cookie; nothing in browser storage.
  const cookies = await browser.context.cookies(base)
  const session = cookies.find((c) => c.name === 'vigil_session')
  t.ok(session?.httpOnly, 'session cookie is HttpOnly')
  t.equal(session?.sameSite, 'Strict')
  t.same(await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie]), [0, 0, ''])
  t.equal(await page.title(), 'Worklist · Vigil', 'no PHI in the title')

  t.same(await seriousAxeViolations(page), [], 'worklist: no serious or critical axe violations')
  await screenshot(page, 'worklist-1280')

  // The device publishes deteriorating vitals over real MQTT; the page was not reloaded.
  const client = await vigil.connect(ward.mine.deviceId, ward.mine.devicePassword)
  t.teardown(() => client.endAsync())
  const now = Date.now()
  const series = [[now - 120_000, 118], [now - 60_000, 139], [now - 1000, 162]] as const
  let seq = 1
  let lastPublishedAt = 0
  for (const [ts, hr] of series) {
    lastPublishedAt = performance.now()
    await client.publishAsync(`devices/${ward.mine.deviceId}/telemetry`, telemetry(seq++, [
      { metric: 'heart_rate', value: hr, unit: '/min', ts },
      { metric: 'resp_rate', value: 24, unit: '/min', ts },
      { metric: 'spo2', value: 93, unit: '%', ts },
      { metric: 'o2_supplemental', value: 0, unit: '1', ts },
      { metric: 'bp_systolic', value: 104, unit: 'mm[Hg]', ts },
      { metric: 'consciousness', value: 0, unit: '1', ts },
      { metric: 'body_temp', value: 38.4, unit: 'Cel', ts }
    ]), { qos: 1 })
  }
  const mineRow = page.locator(`.row[data-patient-id="${ward.mine.id}"]`)
  // Bounded waits. Issue 15's target is 5 s from the reading to the screen: recorded and printed,
  // not asserted (a loaded 2-core machine must not fail the suite); see docs/web-app.md.
  await page.getByRole('alert').filter({ hasText: 'New critical alert' }).waitFor({ timeout: 30_000 })
  const bannerMs = Math.round(performance.now() - lastPublishedAt)
  await mineRow.locator('.badge.sev-critical').first().waitFor({ timeout: 30_000 })
  const rowMs = Math.round(performance.now() - lastPublishedAt)
  t.comment(`critical alert visible ${bannerMs} ms (banner) and ${rowMs} ms (worklist row) after its reading was published (target 5000 ms)`)
  await fs.mkdir(artifactsDir, { recursive: true })
  await fs.writeFile(path.join(artifactsDir, 'critical-alert-visible-ms.json'), JSON.stringify({ bannerMs, rowMs, at: new Date().toISOString() }) + '\n')
  t.equal(await page.locator('.worklist .row').first().getAttribute('data-patient-id'), ward.mine.id, 'the deteriorating patient is first')
  t.match(await mineRow.textContent(), /CRITICAL · open/, 'severity in words, not only colour')
  t.match(await mineRow.textContent(), /HR162/, 'latest heart rate shown')
  await screenshot(page, 'worklist-critical-1280')

  // Acknowledge from the worklist; the alert's escalation stops.
  const alerts = (await vigil.api<any>('GET', `/v1/alerts?patientId=${ward.mine.id}&ruleId=high-hr`)).body.items
  t.equal(alerts.length, 1)
  t.equal(alerts[0].status, 'open')
  t.ok(alerts[0].nextEscalationAt, 'an open alert has its next escalation planned')
  await mineRow.getByRole('button', { name: /Acknowledge critical alert: heart_rate/ }).click()
  await mineRow.getByText('CRITICAL · acknowledged').first().waitFor()
  const acked = (await vigil.api<any>('GET', `/v1/alerts/${alerts[0].id}`)).body
  t.equal(acked.status, 'acknowledged')
  t.equal(acked.acknowledgedBy, ward.nurse.id)
  t.equal(acked.nextEscalationAt, null, 'escalation stopped')

  // A write without the page's CSRF token is refused even with the cookie.
  const forged = await page.evaluate(async (id) => {
    const res = await fetch(`/v1/alerts/${id}/comments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'x' }) })
    return [res.status, (await res.json()).code]
  }, alerts[0].id)
  t.same(forged, [403, 'VIGIL_ERR_CSRF'])

  // The patient page: a chart per vital with the published points.
  await mineRow.getByRole('link', { name: ward.mine.name }).click()
  await page.getByRole('heading', { name: ward.mine.name }).waitFor()
  const chart = page.locator('figure.chart[data-metric="heart_rate"]')
  await chart.waitFor()
  t.equal(await chart.getAttribute('data-points'), '3', 'the three published heart rates')
  await chart.locator('figcaption', { hasText: 'opened in range' }).waitFor()
  t.match(await chart.locator('figcaption').textContent(), /latest 162 \/min; thresholds above 150 \(high-hr\); 2 alert\(s\) opened in range/, 'the heart-rate and NEWS2 alerts marked')
  t.ok(await chart.locator('canvas').count() > 0, 'uPlot drew it')
  t.equal(new URL(page.url()).pathname, `/patients/${ward.mine.id}`, 'an id in the URL, never a name')
  t.equal(await page.title(), 'Patient · Vigil')
  t.same(await seriousAxeViolations(page), [], 'patient page: no serious or critical axe violations')
  await screenshot(page, 'patient-1280')

  // Another patient's page by URL: the same "not found" as a patient that does not exist.
  await page.goto(`${base}/patients/${ward.other.id}`)
  await page.getByRole('heading', { name: 'Not found' }).waitFor()
  t.notOk((await page.content()).includes(ward.other.name))

  // Break-glass from the screen: a reason, then the page opens, with the time left shown.
  await page.getByLabel('Reason').fill('Rapid response call, covering for the ward team')
  await page.getByRole('button', { name: 'Open with break-glass' }).click()
  await page.getByRole('heading', { name: ward.other.name }).waitFor()
  t.match(await page.getByRole('status').filter({ hasText: 'Break-glass' }).textContent(), /Break-glass access: (59|60) min left\. Everything you open is audited/)
  t.equal(await page.title(), 'Patient · Vigil')
  // A reload keeps the countdown: the expiry comes from the server (GET /v1/me/break-glass).
  await page.reload()
  await page.getByRole('heading', { name: ward.other.name }).waitFor()
  t.match(await page.getByRole('status').filter({ hasText: 'Break-glass' }).textContent(), /Break-glass access: (5[89]|60) min left/, 'the time left survives a reload')
  t.same(await page.evaluate(() => [localStorage.length, sessionStorage.length]), [0, 0], 'and is in no browser storage')
  const audit = (await vigil.api<any>('GET', `/v1/audit?patientId=${ward.other.id}&actorId=${ward.nurse.id}&limit=50`)).body.items
  t.ok(audit.some((r: any) => r.action === 'break-glass' && r.outcome === 'allowed'), 'the grant is audited')
  t.ok(audit.some((r: any) => r.action === 'patients:read' && r.breakGlassReason !== null), 'and so is what it opened, with the reason')

  // Narrow screen.
  await page.setViewportSize({ width: 375, height: 800 })
  await page.goto(`${base}/`)
  await page.locator('.worklist .row').first().waitFor()
  t.same(await seriousAxeViolations(page), [], 'worklist at 375 px: no serious or critical axe violations')
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
  t.ok(overflow <= 0, `no horizontal scrolling at 375 px (overflow ${overflow})`)
  await screenshot(page, 'worklist-375')
  await page.goto(`${base}/patients/${ward.mine.id}`)
  await page.locator('figure.chart[data-metric="heart_rate"] canvas').waitFor()
  await screenshot(page, 'patient-375')
  await page.setViewportSize({ width: 1280, height: 800 })

  t.same(browser.consoleErrors.filter((e) => /Content Security Policy|pageerror/.test(e)), [], 'no CSP violations or script errors')

  // Sign out; the back button shows nothing of what was on screen.
  await page.goto(`${base}/`)
  await page.locator('.worklist .row').first().waitFor()
  await page.getByRole('button', { name: 'Sign out' }).click()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
  await page.goBack()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
  const after = await page.content()
  t.notOk(after.includes(ward.mine.name) || after.includes(ward.quiet.name), 'no patient name after sign-out and back')
  const stale = await fetch(`${base}/v1/worklist`, { headers: { cookie: `vigil_session=${session!.value}` } })
  t.equal(stale.status, 401, 'the old cookie no longer works: the session was ended on the server')
  await screenshot(page, 'signin-1280')
})

t.test('an admin registers a device and sees its MQTT password once, with a copy button', async (t) => {
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base })
  await page.goto(`${base}/`)
  await page.getByLabel('Email').fill(ward.admin.email)
  await page.getByLabel('Password').fill(ward.admin.password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('link', { name: 'Admin' }).click()
  await page.getByRole('heading', { name: 'Devices' }).waitFor()
  const form = page.getByRole('form', { name: 'Register a device' })
  await form.getByLabel('Name').fill('Ward 3 oximeter')
  await form.getByLabel('MAC address').fill('02:00:00:00:ee:01')
  await form.getByLabel('Firmware').fill('2.1')
  await form.getByLabel('Software').fill('5.0')
  await form.getByLabel('In use since').fill('2026-11-01')
  await form.getByRole('button', { name: 'Register device' }).click()
  const row = page.locator('tr', { hasText: 'Ward 3 oximeter' })
  await row.waitFor()
  const deviceId = await row.getAttribute('data-device-id')
  await row.getByRole('button', { name: 'Issue credentials for Ward 3 oximeter' }).click()
  const shown = page.getByTestId('one-time-password')
  await shown.waitFor()
  const password = (await shown.textContent())!
  t.match(password, /^\S{20,}$/)
  await page.getByRole('button', { name: 'Copy password' }).click()
  await page.getByRole('button', { name: 'Copied' }).waitFor()
  t.equal(await page.evaluate(() => navigator.clipboard.readText()), password, 'the copy button copies it')
  t.same(await seriousAxeViolations(page), [], 'admin devices: no serious or critical axe violations')
  await screenshot(page, 'admin-devices-1280')

  // It works: the device connects to the real broker with it.
  const client = await vigil.connect(deviceId!, password)
  t.ok(client.connected, 'the device connects with the password shown')
  await client.endAsync()

  // Once: leaving the screen and coming back does not show it again.
  await page.getByRole('link', { name: 'Worklist' }).click()
  await page.getByRole('link', { name: 'Admin' }).click()
  await page.getByRole('heading', { name: 'Devices' }).waitFor()
  await row.waitFor()
  t.equal(await page.getByTestId('one-time-password').count(), 0, 'the password is not shown again')
  t.notOk((await page.content()).includes(password))
  await page.getByRole('button', { name: 'Sign out' }).click()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
})

t.test('a patient sees her own readings and who viewed her data', async (t) => {
  const patched = await vigil.api('PATCH', `/v1/users/${ward.mine.id}`, { email: `patient-${ward.mine.id.slice(0, 8)}@home.example`, password: 'my own long password 7' })
  t.equal(patched.status, 200)
  await page.goto(`${base}/`)
  await page.getByLabel('Email').fill(`patient-${ward.mine.id.slice(0, 8)}@home.example`)
  await page.getByLabel('Password').fill('my own long password 7')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('heading', { name: 'Who viewed my data' }).waitFor()
  const log = page.locator('table').filter({ hasText: 'Nurse' })
  await log.waitFor()
  t.match(await log.textContent(), /\(Nurse\)/, 'the nurse who opened her page, by role')
  t.equal(await page.title(), 'My data · Vigil')
  t.same(await seriousAxeViolations(page), [], 'my data: no serious or critical axe violations')
  await screenshot(page, 'patient-self-1280')
  await page.getByRole('link', { name: 'My readings and alerts' }).click()
  await page.locator('figure.chart[data-metric="heart_rate"]').waitFor()
  await page.getByRole('button', { name: 'Sign out' }).click()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
})
