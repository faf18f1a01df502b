import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { startVigilWithLogCapture } from '../helpers/log-capture.ts'
import type { CapturedVigil } from '../helpers/log-capture.ts'
import { createTestDatabase } from '../helpers/postgres.ts'

/*
 * Canary PHI: a unique value in every sensitive field, seeded through the API of a real Vigil,
 * must appear nowhere it should not — not in a pg_dump of the database (Postgres) or in the
 * database files (embedded PGlite), not in any log line of the run, not in any error body,
 * including those of bad requests that carried the values.
 */

function canaries () {
  const id = randomBytes(4).toString('hex').toUpperCase()
  const c = (field: string) => `CANARY-${field}-${id}`
  const values = {
    dateOfBirth: '1911-11-11',
    line1: c('ADDRESS'),
    postalCode: `CNRY${id}`,
    pcpName: c('PCP'),
    pcpEmail: `canary-pcp-${id.toLowerCase()}@example.org`,
    billingHolder: c('BILLING'),
    billingReference: c('BILLREF'),
    insurer: c('PAYER'),
    memberId: c('MEMBER'),
    cardNumber: c('CARD'),
    familyName: c('FAMILY'),
    familyPhone: `+1 555 01${id.replace(/\D/g, '').padEnd(4, '7').slice(0, 4)} 11`,
    contactName: c('CONTACT'),
    contactPhone: `+1 555 02${id.replace(/\D/g, '').padEnd(4, '3').slice(0, 4)} 22`,
    medication: c('MEDICATION'),
    dose: c('DOSE'),
    allergen: c('ALLERGEN'),
    reaction: c('REACTION')
  }
  const record = {
    dateOfBirth: values.dateOfBirth,
    addresses: [{ kind: 'home', line1: values.line1, city: 'Springfield', postalCode: values.postalCode, country: 'US' }],
    primaryCareProvider: { name: values.pcpName, email: values.pcpEmail },
    billing: { accountHolder: values.billingHolder, accountReference: values.billingReference },
    insurance: [{ payer: values.insurer, memberId: values.memberId }],
    medicalCard: { number: values.cardNumber, issuer: 'State' },
    familyMembers: [{ name: values.familyName, relationship: 'brother', phone: values.familyPhone }],
    emergencyContacts: [{ name: values.contactName, relationship: 'friend', phone: values.contactPhone }],
    medicalHistory: {
      gender: 'other',
      medications: [{ name: values.medication, dose: values.dose, frequency: 'daily' }],
      allergies: [{ substance: values.allergen, reaction: values.reaction, severity: 'life-threatening' }]
    }
  }
  return { displayName: c('NAME'), values: Object.values(values), record }
}

/** Clinical free text (issue 11 item 8): alert comments and resolve reasons, break-glass, override and SpO2-scale reasons. */
function clinicalText () {
  const id = randomBytes(4).toString('hex').toUpperCase()
  const c = (field: string) => `CANARY-${field}-${id} patient on warfarin`
  return { comment: c('COMMENT'), resolveReason: c('RESOLVED'), breakGlassReason: c('BREAKGLASS'), overrideReason: c('OVERRIDE'), scaleReason: c('SPO2SCALE') }
}

const rulesFile = `rules:
  - id: tachycardia
    kind: threshold
    metric: heart_rate
    above: 120
    severity: high
`

/** Writes each kind of clinical free text through the API of a real Vigil, and reads each back. */
async function exerciseClinicalText (t: Test, vigil: CapturedVigil, text: ReturnType<typeof clinicalText>): Promise<void> {
  const { patientId, deviceId, password } = await vigil.provision()
  const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, { clientId: deviceId, username: deviceId, password, reconnectPeriod: 0, protocolVersion: 4 })
  await device.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 160, unit: '/min', ts: Date.now() - 1000 }] }), { qos: 1 })
  await device.endAsync()
  let alertId: string | undefined
  for (const deadline = Date.now() + 20_000; alertId === undefined; await new Promise((resolve) => setTimeout(resolve, 100))) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the tachycardia alert')
    alertId = (await vigil.api('GET', `/v1/alerts?patientId=${patientId}`)).body.items?.[0]?.id
  }
  t.equal((await vigil.api('POST', `/v1/alerts/${alertId}/comments`, { text: text.comment })).status, 201)
  t.equal((await vigil.api('POST', `/v1/alerts/${alertId}/resolve`, { reason: text.resolveReason })).status, 200)
  const events = JSON.stringify((await vigil.api('GET', `/v1/alerts/${alertId}/events`)).body)
  t.ok(events.includes(text.comment) && events.includes(text.resolveReason), 'the comment and the resolve reason read back')

  const expiresAt = new Date(Date.now() + 86_400_000).toISOString()
  t.equal((await vigil.api('PUT', `/v1/patients/${patientId}/rule-overrides/tachycardia`, { above: 140, reason: text.overrideReason, expiresAt })).status, 200)
  t.match(JSON.stringify((await vigil.api('GET', `/v1/patients/${patientId}/rule-overrides`)).body), text.overrideReason, 'the override reason reads back')
  t.equal((await vigil.api('PUT', `/v1/patients/${patientId}/news2-scale`, { spo2Scale: 2, reason: text.scaleReason })).status, 200)

  // Break-glass: a doctor off the care team, signed in as herself.
  const email = `canary-doctor-${randomBytes(3).toString('hex')}@example.org`
  t.equal((await vigil.api('POST', '/v1/users', { email, displayName: 'Canary Doctor', password: 'correct horse 42', roles: ['doctor'] })).status, 201)
  const base = `http://127.0.0.1:${vigil.httpPort}`
  const login = await (await fetch(`${base}/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, password: 'correct horse 42' }) })).json() as { accessToken: string }
  const doctor = { authorization: `Bearer ${login.accessToken}`, 'content-type': 'application/json' }
  const grant = await fetch(`${base}/v1/patients/${patientId}/break-glass`, { method: 'POST', headers: doctor, body: JSON.stringify({ reason: text.breakGlassReason }) })
  t.equal(grant.status, 201)
  // An access through the grant: its audit row carries the reason too.
  t.equal((await fetch(`${base}/v1/patients/${patientId}/readings`, { headers: doctor })).status, 200)
  t.match(JSON.stringify((await vigil.api('GET', '/v1/break-glass')).body), text.breakGlassReason, 'the break-glass reason reads back for review')
}

function found (text: string, values: string[]): string[] {
  return values.filter((v) => text.includes(v))
}

async function exercise (t: Test, vigil: CapturedVigil, seeded: ReturnType<typeof canaries>): Promise<void> {
  const errorBodies: string[] = []
  const patient = await vigil.api('POST', '/v1/patients', { displayName: seeded.displayName })
  t.equal(patient.status, 201)
  const id = patient.body.id as string
  const route = `/v1/patients/${id}/record`

  const put = await vigil.api('PUT', route, seeded.record)
  t.equal(put.status, 200, JSON.stringify(put.body?.code))
  const got = await vigil.api('GET', route)
  t.same(found(JSON.stringify(got.body), seeded.values).length, seeded.values.length, 'the owner reads every canary back')
  const lookup = await vigil.api('POST', '/v1/patients/lookup', { medicalCardNumber: seeded.values[9]! })
  t.same(lookup.body, { items: [{ patientId: id }] })
  const patched = await vigil.api('PATCH', route, { familyMembers: seeded.record.familyMembers, medicalHistory: seeded.record.medicalHistory })
  t.equal(patched.status, 200)

  // Bad requests that carry the canaries.
  const bad: Array<[string, string, string, unknown]> = [
    ['future DOB', 'PUT', route, { ...seeded.record, dateOfBirth: '2999-01-01' }],
    ['a canary as an email', 'PATCH', route, { primaryCareProvider: { name: seeded.values[3], email: seeded.values[1] } }],
    ['a canary as a date', 'PATCH', route, { dateOfBirth: seeded.values[1] }],
    ['a canary as an enum', 'PATCH', route, { medicalHistory: { gender: seeded.values[14] } }],
    ['a canary as a phone', 'PATCH', route, { emergencyContacts: [{ name: 'x', relationship: 'y', phone: seeded.values[12] }] }],
    ['too long', 'PATCH', route, { billing: { accountHolder: `${seeded.values[5]}${'x'.repeat(300)}` } }],
    ['unknown patient', 'PUT', '/v1/patients/00000000-0000-4000-8000-000000000000/record', seeded.record],
    ['card number with bad characters', 'POST', '/v1/patients/lookup', { medicalCardNumber: `${seeded.values[9]}/*` }],
    ['a canary in the patient name, too long', 'POST', '/v1/patients', { displayName: seeded.displayName.padEnd(300, 'x') }],
    ['oversized body', 'PUT', route, { ...seeded.record, addresses: Array.from({ length: 1000 }, () => seeded.record.addresses[0]) }]
  ]
  for (const [name, method, url, body] of bad) {
    const res = await vigil.api(method, url, body)
    t.ok(res.status >= 400 && res.status < 500, `${name}: ${res.status}`)
    errorBodies.push(JSON.stringify(res.body))
  }
  // Not JSON at all: JSON.parse's message would quote it.
  const broken = await fetch(`http://127.0.0.1:${vigil.httpPort}${route}`, {
    method: 'PUT',
    headers: { authorization: 'Bearer test-admin-token-0123456789abcdef', 'content-type': 'application/json' },
    body: `{"dateOfBirth": ${seeded.values[1]}`
  })
  t.equal(broken.status, 400)
  errorBodies.push(await broken.text())
  const leaks = found(errorBodies.join('\n') , [...seeded.values, seeded.displayName])
  t.same(leaks, [], 'no canary in any error body')
}

t.test('canaries on the machine\'s Postgres: not in pg_dump, not in logs, not in error bodies', async (t) => {
  const db = await createTestDatabase()
  t.teardown(() => db.drop())
  const rules = path.join(await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-canary-rules-')), 'alert-rules.yaml')
  await fs.writeFile(rules, rulesFile)
  const vigil = await startVigilWithLogCapture({ env: { DATABASE_URL: db.url, LOG_LEVEL: 'debug', VIGIL_ALERT_RULES: rules } })
  let closed = false
  t.teardown(async () => { if (!closed) await vigil.close() })
  const seeded = canaries()
  await exercise(t, vigil, seeded)
  const text = clinicalText()
  await exerciseClinicalText(t, vigil, text)

  const dump = await new Promise<string>((resolve, reject) => {
    execFile('pg_dump', ['--no-owner', '--dbname', db.url], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout) => err === null ? resolve(stdout) : reject(err))
  })
  t.match(dump, /COPY public\.patient_records/, 'the dump holds the records table')
  t.ok((dump.match(/v1\.k1\.[A-Za-z0-9_-]{16}\./g) ?? []).length >= 11, 'and its envelopes')
  t.same(found(dump, seeded.values), [], 'no canary in pg_dump')
  t.same(found(dump, Object.values(text)), [], 'no clinical free text in pg_dump')
  // Control: display names are stored plain (README, PHI at rest), so the dump must show this one.
  t.ok(dump.includes(seeded.displayName), 'the dump does show plaintext where there is some')

  await vigil.close()
  closed = true
  const logText = vigil.logs.lines.map((l) => JSON.stringify(l)).join('\n')
  t.ok(vigil.logs.lines.length > 20, 'the run logged (debug level)')
  t.same(found(logText, [...seeded.values, seeded.displayName, ...Object.values(text)]), [], 'no canary in the logs of the run')
  t.ok(vigil.logs.lines.some((l) => l.level === 40 && /PHI encryption key/.test(String(l.msg))), 'the embedded-default key warning was logged')
})

t.test('canaries on embedded PGlite: not in the database files, not in logs, not in error bodies', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-canary-'))
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }))
  const rules = path.join(dir, 'alert-rules.yaml')
  await fs.writeFile(rules, rulesFile)
  const vigil = await startVigilWithLogCapture({ database: 'pglite', dataDir: dir, env: { LOG_LEVEL: 'debug', VIGIL_ALERT_RULES: rules } })
  let closed = false
  t.teardown(async () => { if (!closed) await vigil.close() })
  const seeded = canaries()
  await exercise(t, vigil, seeded)
  const text = clinicalText()
  await exerciseClinicalText(t, vigil, text)
  // Closed first, so PGlite has written everything to its files.
  await vigil.close()
  closed = true

  const keyFile = await fs.stat(path.join(dir, 'secret-keys.json'))
  t.equal(keyFile.mode & 0o777, 0o600, 'the embedded default key file is private to its owner')
  let files = 0
  const hits: string[] = []
  for (const entry of await fs.readdir(path.join(dir, 'pglite'), { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue
    files++
    const bytes = await fs.readFile(path.join(entry.parentPath, entry.name))
    for (const v of [...seeded.values, ...Object.values(text)]) if (bytes.includes(v)) hits.push(`${v} in ${entry.name}`)
  }
  t.ok(files > 50, `scanned the PGlite files (${files})`)
  t.same(hits, [], 'no canary in the embedded database files')
  // Control: the display name is stored plain (README, PHI at rest), so the scan must find it.
  let nameSeen = false
  for (const entry of await fs.readdir(path.join(dir, 'pglite'), { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && (await fs.readFile(path.join(entry.parentPath, entry.name))).includes(seeded.displayName)) nameSeen = true
  }
  t.ok(nameSeen, 'the scan does see plaintext where there is some')
  const logText = vigil.logs.lines.map((l) => JSON.stringify(l)).join('\n')
  t.same(found(logText, [...seeded.values, seeded.displayName]), [], 'no canary in the logs of the run')
})
