import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { openBrowserBeside, screenshot, seriousAxeViolations } from '../helpers/browser.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { seedWard } from './ward.ts'

// The admin screens against a whole Vigil (embedded PGlite, real MQTT) in Debian's Chromium:
// the alert rules editor (problems at their line, versions), users, roles and care teams,
// audit search; and alert handling by name (who was notified, assigning from a picker).

t.setTimeout(600_000)

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-web-admin-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')
const rules = `escalationPolicies:
  - id: standard
    tiers:
      - { notify: [nurse], escalateAfter: 5m }
      - { notify: [doctor], escalateAfter: 10m }
rules:
  - id: high-hr
    kind: threshold
    metric: heart_rate
    above: 150
    severity: critical
    escalation: standard
`
await fs.writeFile(rulesPath, rules)
// Chromium starts while Vigil does.
const [vigil, browser] = await openBrowserBeside(startTestVigil({ VIGIL_ALERT_RULES: rulesPath, WORKER_THREADS: '1' }))
t.teardown(async () => {
  await browser.close()
  await vigil.close()
  await fs.rm(dir, { recursive: true, force: true })
})
const base = `http://127.0.0.1:${vigil.httpPort}`
const tag = 'adm' + Math.random().toString(36).slice(2, 5)
const ward = await seedWard(vigil, tag)
const nurseName = `Nurse ${tag}`
const { page } = browser
// Every URL the page asks for: no patient name may be in one.
const requested: string[] = []
page.on('request', (request) => { requested.push(request.url()) })

await page.goto(`${base}/`)
await page.getByLabel('Email').fill(ward.admin.email)
await page.getByLabel('Password').fill(ward.admin.password)
await page.getByRole('button', { name: 'Sign in' }).click()
await page.getByRole('link', { name: 'Admin' }).click()
await page.getByRole('heading', { name: 'Devices' }).waitFor()

t.test('the rules editor shows each problem at its line, saves a valid edit, and lists the versions', async (t) => {
  await page.getByRole('navigation', { name: 'Administration' }).getByRole('link', { name: 'Alert rules' }).click()
  const editor = page.getByLabel('Rules file (YAML)')
  await editor.waitFor()
  t.equal(new URL(page.url()).pathname, '/admin/rules')
  t.equal(await page.title(), 'Alert rules · Vigil')
  t.equal(await editor.inputValue(), rules, 'the active document')

  // A schema problem: the value on line 10 is not a number.
  await editor.fill(rules.replace('above: 150', 'above: lots'))
  await page.getByRole('button', { name: 'Save rules' }).click()
  await page.getByRole('heading', { name: 'Not saved: the rules have problems' }).waitFor()
  const marked = page.locator('.listing li.has-problem')
  t.equal(await marked.count(), 1, 'one line marked')
  t.equal(await marked.getAttribute('data-line'), '10', 'the line of the bad value')
  t.match(await marked.textContent(), /above: lots.*rules\[0\] \(id "high-hr"\): above must be a number/s, 'the message under the line it concerns')
  t.same(await seriousAxeViolations(page), [], 'rules editor with problems: no serious or critical axe violations')
  await screenshot(page, 'admin-rules-problems-1280')
  await page.getByRole('button', { name: 'Line 10, column 12' }).click()
  const caret = await editor.evaluate((el: HTMLTextAreaElement) => [el.selectionStart, document.activeElement === el])
  const lines = rules.split('\n')
  t.same(caret, [lines.slice(0, 9).join('\n').length + 1 + 11, true], 'the button puts the cursor at line 10, column 12')

  // Not YAML at all: the syntax code, still at a line.
  await editor.fill(rules.replace('    kind: threshold', '   kind: threshold'))
  await page.getByRole('button', { name: 'Save rules' }).click()
  await page.getByRole('heading', { name: 'Not saved: the document is not valid YAML' }).waitFor()
  t.ok(await page.locator('.listing li.has-problem').count() >= 1, 'a YAML error is marked at a line too')
  t.match(await vigil.api<any>('GET', '/v1/alert-rules').then((r) => r.body.version), /^[0-9a-f]{64}$/)

  // A valid edit: saved, running, and the newest version, by the admin's name.
  await editor.fill(rules.replace('above: 150', 'above: 140'))
  await page.getByRole('button', { name: 'Save rules' }).click()
  await page.getByRole('status').filter({ hasText: 'Saved' }).waitFor()
  t.equal(await page.locator('.rules-problems').count(), 0, 'problems gone')
  const state = (await vigil.api<any>('GET', '/v1/alert-rules')).body
  t.match(state.rules, [{ id: 'high-hr', above: 140 }], 'the new threshold runs')
  const rows = page.locator('table.versions tbody tr')
  t.equal(await rows.count(), 2, 'two versions')
  t.match(await rows.first().textContent(), new RegExp(`Admin ${tag}.*changed high-hr.*\\(active\\)`, 's'), 'who, what and which is active')
  await rows.nth(1).getByRole('button', { name: /^View the version/ }).click()
  const view = page.locator('.version-view')
  await view.waitFor()
  t.equal(await view.locator('pre').textContent(), rules, 'the first version, as written')
  t.same(await seriousAxeViolations(page), [], 'rules editor with a version open: no serious or critical axe violations')
  await screenshot(page, 'admin-rules-1280')
  await view.getByRole('button', { name: 'Copy into the editor' }).click()
  t.equal(await editor.inputValue(), rules, 'an old version can be restored through the editor')
  await page.getByRole('button', { name: 'Discard changes' }).click()
})

t.test('users, roles and care teams', async (t) => {
  await page.getByRole('navigation', { name: 'Administration' }).getByRole('link', { name: 'People' }).click()
  await page.getByRole('heading', { name: 'Users' }).waitFor()
  t.equal(new URL(page.url()).pathname, '/admin/people')
  const form = page.getByRole('form', { name: 'Add a user' })
  await form.getByLabel('Name').fill('Dr Barbara Liskov')
  await form.getByLabel('Email').fill('liskov@ward.example')
  await form.getByLabel('Initial password').fill('substitution principle 87')
  await form.getByLabel('Role').selectOption({ label: 'Nurse' })
  await form.getByRole('button', { name: 'Add user' }).click()
  const row = page.locator('.users-table tr', { hasText: 'Dr Barbara Liskov' })
  await row.waitFor()
  const userId = (await row.getAttribute('data-user-id'))!
  t.match(await row.textContent(), /Nurse/)
  await row.getByLabel('Role for Dr Barbara Liskov').selectOption({ label: 'Doctor' })
  await row.getByRole('button', { name: 'Grant' }).click()
  await page.getByRole('status').filter({ hasText: 'now holds Doctor' }).waitFor()
  t.same((await vigil.api<any>('GET', `/v1/users/${userId}`)).body.roles.sort(), ['doctor', 'nurse'])
  await row.getByRole('button', { name: 'Revoke Nurse from Dr Barbara Liskov' }).click()
  await page.getByRole('status').filter({ hasText: 'no longer holds Nurse' }).waitFor()
  t.same((await vigil.api<any>('GET', `/v1/users/${userId}`)).body.roles, ['doctor'])
  t.ok(await page.locator('h2', { hasText: 'Roles' }).count() === 1, 'the roles are listed')
  const roleForm = page.getByRole('form', { name: 'Create a role' })
  await roleForm.getByLabel('Role name').fill('Ward clerk')
  await roleForm.getByLabel('Reaches').selectOption({ label: 'care team and break-glass' })
  await roleForm.getByLabel('readings:read').check()
  await roleForm.getByRole('button', { name: 'Create role' }).click()
  await page.getByRole('status').filter({ hasText: 'The role Ward clerk was created.' }).waitFor()
  await page.locator('tr', { hasText: 'Ward clerk (custom)' }).waitFor()
  const created = (await vigil.api<any>('GET', '/v1/roles')).body.items.find((r: any) => r.name === 'Ward clerk')
  t.match(created, { category: 'clinician', permissions: ['readings:read'], builtin: false }, 'a custom role, made from the screen')

  // Care teams: her two patients; add the third, end one.
  await page.getByLabel('Clinician').selectOption({ label: nurseName })
  const team = page.locator('table.care-team tbody tr')
  await team.nth(1).waitFor()
  t.same((await team.locator('td:first-child').allTextContents()).sort(), [ward.mine.name, ward.quiet.name].sort())
  await page.getByRole('form', { name: 'Add a patient to this care team' }).getByLabel('Patient').selectOption({ label: ward.other.name })
  await page.getByRole('button', { name: 'Add to care team' }).click()
  await team.nth(2).waitFor()
  t.ok((await vigil.api<any>('GET', `/v1/patients/${ward.other.id}/care-team`)).body.items.some((a: any) => a.clinicianId === ward.nurse.id && a.validTo === null))
  await page.getByRole('button', { name: `End now: care of ${ward.other.name}` }).click()
  await page.locator('table.care-team tr', { hasText: ward.other.name }).getByText('open-ended').waitFor({ state: 'detached' })
  t.ok((await vigil.api<any>('GET', `/v1/patients/${ward.other.id}/care-team`)).body.items.every((a: any) => a.validTo !== null), 'ended')
  t.same(await seriousAxeViolations(page), [], 'people: no serious or critical axe violations')
  await screenshot(page, 'admin-people-1280')
})

t.test('audit search by person, patient and action, a page at a time, with no name in any URL', async (t) => {
  // 55 reads of one patient by the admin, from the page (her session): more than one page.
  await page.evaluate(async (id) => {
    for (let i = 0; i < 55; i++) await fetch(`/v1/patients/${id}`, { credentials: 'same-origin' })
  }, ward.quiet.id)
  await page.getByRole('navigation', { name: 'Administration' }).getByRole('link', { name: 'Audit' }).click()
  const form = page.getByRole('form', { name: 'Search the audit log' })
  await form.waitFor()
  await form.getByLabel('Person').selectOption({ label: `Admin ${tag}` })
  await form.getByLabel('Patient').selectOption({ label: ward.quiet.name })
  await form.getByLabel('Action').fill('patients:read')
  await form.getByLabel('From').fill(new Date(Date.now() - 3_600_000 - new Date().getTimezoneOffset() * 60_000).toISOString().slice(0, 16))
  await form.getByRole('button', { name: 'Search' }).click()
  await page.getByRole('status').filter({ hasText: 'Rows 1–50' }).waitFor()
  const rows = page.locator('.audit-table tbody tr')
  t.equal(await rows.count(), 50)
  t.match(await rows.first().textContent(), new RegExp(`Admin .*patients:read.*${ward.quiet.name}.*Allowed`))
  t.same(await seriousAxeViolations(page), [], 'audit: no serious or critical axe violations')
  await screenshot(page, 'admin-audit-1280')
  await page.getByRole('button', { name: 'Older' }).click()
  await page.getByRole('status').filter({ hasText: 'Rows 51–55' }).waitFor()
  t.equal(await rows.count(), 5)
  t.ok(await page.getByRole('button', { name: 'Older' }).isDisabled(), 'the last page')
  await page.getByRole('button', { name: 'Newer' }).click()
  await page.getByRole('status').filter({ hasText: 'Rows 1–50' }).waitFor()
  await form.getByLabel('Action').fill('break-glass')
  await form.getByRole('button', { name: 'Search' }).click()
  await page.getByRole('status').filter({ hasText: 'No audit rows match' }).waitFor()

  t.equal(new URL(page.url()).pathname, '/admin/audit', 'the filter is not in the page URL')
  const names = [ward.mine.name, ward.quiet.name, ward.other.name, 'Ada', 'Grace', 'Edsger']
  const leaks = requested.filter((url) => names.some((n) => decodeURIComponent(url).includes(n) || url.includes(encodeURIComponent(n))))
  t.same(leaks, [], 'no request URL holds a patient name')
})

t.test('an alert shows who was notified, by name and tier, and is assigned from a picker', async (t) => {
  const client = await vigil.connect(ward.mine.deviceId, ward.mine.devicePassword)
  t.teardown(() => client.endAsync())
  // The page is open before the reading: the alert must arrive through the alert stream.
  await page.goto(`${base}/patients/${ward.mine.id}`)
  await page.getByRole('heading', { level: 1 }).waitFor()
  await client.publishAsync(`devices/${ward.mine.deviceId}/telemetry`, telemetry(1, [{ metric: 'heart_rate', value: 171, unit: '/min', ts: Date.now() - 1000 }]), { qos: 1 })
  const card = page.locator('.alert-card', { hasText: 'critical' }).first()
  await card.waitFor({ timeout: 30_000 })
  t.pass('an alert opened while the patient page is open shows without a reload')
  await card.getByRole('button', { name: 'Show events' }).click()
  const opened = card.locator('.events li', { hasText: 'opened' })
  await opened.waitFor()
  t.match(await opened.textContent(), new RegExp(`escalation tier 0 \\(nurse\\) · notified ${nurseName}`), 'the tier and the name of the nurse it reached')
  const picker = card.getByLabel('Assign to')
  await picker.focus()
  await picker.locator('option', { hasText: nurseName }).waitFor({ state: 'attached' })
  const options = await picker.locator('option').allTextContents()
  t.same(options.slice(1), [nurseName], 'only the clinicians who reach the patient, by name')
  await picker.selectOption({ label: nurseName })
  await card.getByRole('button', { name: 'Assign' }).click()
  await card.getByText(`assigned to ${nurseName}`).waitFor()
  const alert = (await vigil.api<any>('GET', `/v1/alerts?patientId=${ward.mine.id}`)).body.items[0]
  t.equal(alert.assignedTo, ward.nurse.id)
  t.same(await seriousAxeViolations(page), [], 'patient page with events: no serious or critical axe violations')
  await screenshot(page, 'alert-events-1280')

  // 375 px: the admin screens fit too.
  await page.setViewportSize({ width: 375, height: 800 })
  await page.goto(`${base}/admin/rules`)
  await page.getByLabel('Rules file (YAML)').waitFor()
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
  t.ok(overflow <= 0, `no horizontal scrolling at 375 px (overflow ${overflow})`)
  t.same(await seriousAxeViolations(page), [], 'rules editor at 375 px: no serious or critical axe violations')
  await screenshot(page, 'admin-rules-375')
  await page.setViewportSize({ width: 1280, height: 800 })
  t.same(browser.consoleErrors.filter((e) => /Content Security Policy|pageerror/.test(e)), [], 'no CSP violations or script errors')
})
