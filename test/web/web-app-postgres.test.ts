import t from 'tap'
import { openBrowserBeside, seriousAxeViolations } from '../helpers/browser.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { seedWard } from './ward.ts'

// The web app on the machine's PostgreSQL (DATABASE_URL) instead of embedded PGlite: sign-in,
// the nurse's worklist, a live alert from a real MQTT publish, its acknowledgement, sign-out.

t.setTimeout(600_000)
const db = await createTestDatabase()
// Chromium starts while Vigil does.
const [vigil, browser] = await openBrowserBeside(startTestVigil({ DATABASE_URL: db.url, WORKER_THREADS: '1' })).catch(async (err: unknown) => {
  await db.drop()
  throw err
})
t.teardown(async () => {
  await browser.close()
  await vigil.close()
  await db.drop()
})
const base = `http://127.0.0.1:${vigil.httpPort}`
const ward = await seedWard(vigil)
const { page } = browser
// Fake timers, running at real speed until a test jumps them (the idle sign-out below).
await page.clock.install()

t.test('sign in, live alert, acknowledge, sign out (PostgreSQL)', async (t) => {
  await page.goto(`${base}/`)
  await page.getByLabel('Email').fill(ward.nurse.email)
  await page.getByLabel('Password').fill('not the password')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('alert').filter({ hasText: 'email or password is wrong' }).waitFor()
  await page.getByLabel('Password').fill(ward.nurse.password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.locator('.worklist .row').nth(1).waitFor()
  await page.locator('.live.on').waitFor()
  t.same((await page.locator('.worklist .name').allTextContents()).sort(), [ward.mine.name, ward.quiet.name].sort())

  // The default rules (config/alert-rules.yaml): SpO2 below 88 % for 2 minutes is critical … but
  // a NEWS2 of 7 or more is at once. Publish a high-risk set.
  const client = await vigil.connect(ward.mine.deviceId, ward.mine.devicePassword)
  t.teardown(() => client.endAsync())
  const ts = Date.now() - 1000
  await client.publishAsync(`devices/${ward.mine.deviceId}/telemetry`, telemetry(1, [
    { metric: 'heart_rate', value: 135, unit: '/min', ts }, { metric: 'resp_rate', value: 26, unit: '/min', ts },
    { metric: 'spo2', value: 90, unit: '%', ts }, { metric: 'o2_supplemental', value: 1, unit: '1', ts },
    { metric: 'bp_systolic', value: 95, unit: 'mm[Hg]', ts }, { metric: 'consciousness', value: 0, unit: '1', ts },
    { metric: 'body_temp', value: 39.4, unit: 'Cel', ts }
  ]), { qos: 1 })
  const row = page.locator(`.row[data-patient-id="${ward.mine.id}"]`)
  await row.getByRole('button', { name: /^Acknowledge/ }).first().waitFor({ timeout: 30_000 })
  t.equal(await page.locator('.worklist .row').first().getAttribute('data-patient-id'), ward.mine.id)
  const before = (await vigil.api<any>('GET', `/v1/alerts?patientId=${ward.mine.id}&status=open`)).body.items
  t.ok(before.length >= 1, 'an open alert')
  await row.getByRole('button', { name: /^Acknowledge/ }).first().click()
  await row.getByText(/· acknowledged/).first().waitFor()
  const acknowledged = (await vigil.api<any>('GET', `/v1/alerts?patientId=${ward.mine.id}&status=acknowledged`)).body.items
  t.equal(acknowledged.length, 1)
  t.equal(acknowledged[0].acknowledgedBy, ward.nurse.id)
  t.same(await seriousAxeViolations(page), [])

  await row.getByRole('link', { name: ward.mine.name }).click()
  await page.locator('figure.chart[data-metric="heart_rate"]').waitFor()
  await page.getByRole('button', { name: 'Sign out' }).click()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
  await page.goBack()
  await page.getByRole('button', { name: 'Sign in' }).waitFor()
  t.notOk((await page.content()).includes(ward.mine.name), 'nothing of the worklist after sign-out and back')
})

t.test('after 30 minutes without input the screen signs out, and so does the server', async (t) => {
  await page.goto(`${base}/`)
  await page.getByLabel('Email').fill(ward.nurse.email)
  await page.getByLabel('Password').fill(ward.nurse.password)
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.locator('.worklist .row').nth(1).waitFor()
  const cookie = (await browser.context.cookies(base)).find((c) => c.name === 'vigil_session')!
  // VIGIL_SESSION_IDLE_SECONDS' default, 1800 s: jump past it with no input in between.
  await page.clock.fastForward('31:00')
  await page.getByRole('status').filter({ hasText: 'signed out after a period without activity' }).waitFor()
  t.equal(await page.locator('.worklist').count(), 0, 'the worklist is gone from the screen')
  t.notOk((await page.content()).includes(ward.mine.name))
  const res = await fetch(`${base}/v1/worklist`, { headers: { cookie: `vigil_session=${cookie.value}` } })
  t.equal(res.status, 401, 'the page ended the session on the server too')
})
