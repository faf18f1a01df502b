import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import t from 'tap'
import { startAlertEngine } from '../../../alerts/engine/alert-engine.ts'
import type { ConditionChange } from '../../../alerts/contract.ts'
import { sha256, startRulesFile } from '../../../alerts/engine/rules-file.ts'
import { buildApi } from '../../../api/app.ts'
import type { StoredReading } from '../../../readings/reading.ts'
import { openDatabase } from '../../../store/database.ts'
import { apiDepsFor } from '../../helpers/api-deps.ts'
import { createTestDatabase } from '../../helpers/postgres.ts'
import { testKeyring } from '../../helpers/keys.ts'
import { userWithLogin } from '../../helpers/people.ts'
import { waitFor } from '../../helpers/wait.ts'

// Encrypts clinical free text (alert comments, override reasons) for every engine/lifecycle this file starts.
const clinicalTextKeyring = testKeyring()

const log = pino({ level: 'silent' })
const testDb = await createTestDatabase()
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-rules-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')

const rulesAt = (above: number): string => `
escalationPolicies:
  - id: standard
    tiers: [{ notify: [nurse], escalateAfter: 5m }, { notify: [doctor], escalateAfter: 10m }]
rules:
  - id: tachycardia
    kind: threshold
    metric: heart_rate
    above: ${above}
    severity: high
    escalation: standard
  - id: news2
    kind: news2
    freshness: 1h
    bands: { medium: high, high: critical }
`
const v1 = rulesAt(120)
await fs.writeFile(rulesPath, v1)

const changes: ConditionChange[] = []
const rulesFile = await startRulesFile({ pool: db.pool, path: rulesPath, log, debounceMs: 20 })
const engine = await startAlertEngine({
  keyring: clinicalTextKeyring, pool: db.pool, rulesFile, workerThreads: 1, log, registry: new Registry(),
  sink: { apply: async (c) => { changes.push(...c) } },
  writeDerived: async () => {}
})
const deps = apiDepsFor(db, log)
const app = await buildApi({ ...deps, alertRules: engine })
t.teardown(async () => {
  await app.close()
  await engine.close()
  await rulesFile.close()
  await db.close()
  await testDb.drop()
  await fs.rm(dir, { recursive: true, force: true })
})
const { token, id: tokenId } = await deps.tokens.create('rules test', 'admin')
const headers = { authorization: `Bearer ${token}` }
const patient = await deps.patients.create('Rules Patient')
const deviceId = '22222222-2222-4222-8222-222222222222'

/** An editor's save: write a temp file, rename it over the rules file. */
async function editorSave (text: string): Promise<void> {
  await fs.writeFile(`${rulesPath}.swp`, text)
  await fs.rename(`${rulesPath}.swp`, rulesPath)
}

async function heartRate (value: number, ts: number): Promise<ConditionChange[]> {
  const before = changes.length
  const reading: StoredReading = { patientId: patient.id, deviceId, metric: 'heart_rate', value, unit: '/min', ts, seq: null }
  engine.onAccepted([reading])
  await engine.flush()
  return changes.slice(before)
}

const get = async (query = '') => await app.inject({ method: 'GET', url: `/v1/alert-rules${query}`, headers })

t.test('GET /v1/alert-rules: active version, rules, no error, history', async (t) => {
  const res = await get()
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.version, sha256(v1))
  t.equal(body.document, v1)
  t.match(body.rules, [{ id: 'tachycardia', kind: 'threshold', above: 120 }, { id: 'news2', kind: 'news2' }])
  t.match(body.escalationPolicies, [{ id: 'standard', tiers: [{ notify: ['nurse'], afterMs: 300_000 }, { notify: ['doctor'], afterMs: 600_000 }] }])
  t.equal(body.lastError, null)
  t.match(body.history.items, [{ version: sha256(v1), loadedBy: /^file \(uid \d+\)$/, added: ['tachycardia', 'news2'], removed: [], changed: [] }])
})

t.test('an invalid edit keeps the old rules and reports the error', async (t) => {
  t.equal((await heartRate(115, 1_000)).length, 0, '115 is below 120')
  await editorSave(rulesAt(100).replace('above: 100', 'above: "a hundred"').replace('severity: high', 'severity: severe'))
  await waitFor('the rejected edit', () => engine.rulesFile.lastError() !== null)
  const body = (await get()).json()
  t.equal(body.version, sha256(v1), 'the previous version is still active')
  t.match(body.lastError, {
    version: /^[0-9a-f]{64}$/,
    problems: [
      { path: 'rules[0].severity', message: 'rules[0] (id "tachycardia"): severity must be one of low, medium, high, critical' },
      { path: 'rules[0].above', message: 'rules[0] (id "tachycardia"): above must be a number' }
    ]
  })
  t.equal(body.history.items.length, 1, 'a rejected edit is not a version')
  t.equal((await heartRate(115, 2_000)).length, 0, 'still evaluated against 120')

  await editorSave('rules: [oops')
  await waitFor('the YAML error', () => engine.rulesFile.lastError()?.problems[0]?.message.startsWith('YAML') === true)
  t.equal(engine.rules().version, sha256(v1))
})

t.test('a valid edit takes effect without a restart and is recorded', async (t) => {
  const v2 = rulesAt(110)
  await editorSave(v2)
  await waitFor('the new version', () => engine.rules().version === sha256(v2))
  const fired = await heartRate(115, 3_000)
  t.match(fired, [{ ruleId: 'tachycardia', status: 'firing', details: { threshold: 110 } }], 'the next reading uses the new threshold')
  const body = (await get()).json()
  t.equal(body.lastError, null, 'the error is gone once a valid version loads')
  t.match(body.history.items, [
    { version: sha256(v2), added: [], removed: [], changed: ['tachycardia'] },
    { version: sha256(v1) }
  ])
})

t.test('PUT /v1/alert-rules: validated, written atomically, recorded with the caller', async (t) => {
  const invalid = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: 'rules:\n  - id: x\n    kind: threshold\n    metric: pulse\n    above: 1\n    severity: high\n' } })
  t.equal(invalid.statusCode, 400)
  t.equal(invalid.json().code, 'VIGIL_ERR_RULES_INVALID')
  t.same(invalid.json().details, [{ path: 'rules[0].metric', message: 'rules[0] (id "x"): metric is not in the vitals catalogue ("pulse")', line: 4, column: 13 }],
    'a schema problem carries the line and column of the value it concerns')

  const v3 = rulesAt(130).replace(/  - id: news2[\s\S]*$/, '')
  const res = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: v3 } })
  t.equal(res.statusCode, 200)
  t.equal(res.json().version, sha256(v3))
  t.equal(await fs.readFile(rulesPath, 'utf8'), v3, 'the file holds the new document')
  t.match(res.json().history.items[0], { loadedBy: `token:${tokenId}`, removed: ['news2'], changed: ['tachycardia'] })
  // The watcher sees the renamed file: same content, so no second version.
  await engine.rulesFile.reload()
  const page1 = (await get('?limit=2')).json()
  t.equal(page1.history.items.length, 2)
  t.type(page1.history.nextCursor, 'string')
  const page2 = (await get(`?limit=2&cursor=${page1.history.nextCursor}`)).json()
  t.match(page2.history.items, [{ version: sha256(v1) }])
  t.equal(page2.history.nextCursor, null)
  t.equal((await get('?cursor=abc')).statusCode, 400)
})

t.test('PUT /v1/alert-rules: errors at their line and column (YAML, JSON, schema), each version viewable', async (t) => {
  const before = (await get('')).json().version
  const yaml = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: 'rules:\n  - id: x\n    kind: threshold\n   metric: heart_rate\n' } })
  t.equal(yaml.statusCode, 400)
  t.equal(yaml.json().code, 'VIGIL_ERR_RULES_SYNTAX', 'not YAML: its own code')
  t.match(yaml.json().details, [{ path: '', message: /^YAML: /, line: 4, column: Number }])
  const json = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: '{\n  "rules": [\n    {"id": "x", "kind": "threshold",, "metric": "heart_rate"}\n  ]\n}\n' } })
  t.equal(json.json().code, 'VIGIL_ERR_RULES_SYNTAX')
  t.match(json.json().details[0], { line: 3 }, 'a JSON document: the line of the stray comma')
  const schema = await app.inject({
    method: 'PUT', url: '/v1/alert-rules', headers,
    payload: { document: 'rules:\n  - id: ok\n    kind: threshold\n    metric: heart_rate\n    above: 120\n    severity: high\n  - id: y\n    kind: threshold\n    metric: heart_rate\n    above: lots\n    severity: high\n' }
  })
  t.equal(schema.json().code, 'VIGIL_ERR_RULES_INVALID')
  t.same(schema.json().details, [{ path: 'rules[1].above', message: 'rules[1] (id "y"): above must be a number', line: 10, column: 12 }])
  const missing = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: 'rules:\n  - id: z\n    kind: threshold\n    metric: heart_rate\n    above: 120\n' } })
  t.match(missing.json().details, [{ path: 'rules[0].severity', message: /severity is required/, line: 2, column: 5 }], 'a missing field: the line of the rule that lacks it')
  t.equal((await get('')).json().version, before, 'nothing changed')

  const state = (await get('')).json()
  const newest = state.history.items[0]
  t.match(newest, { id: /^[0-9]+$/, version: state.version, loadedByName: null }, 'a token edited it: no user name')
  const version = await app.inject({ method: 'GET', url: `/v1/alert-rules/versions/${newest.id}`, headers })
  t.equal(version.statusCode, 200)
  t.match(version.json(), { id: newest.id, version: state.version, active: true, document: state.document })
  const oldest = state.history.items[state.history.items.length - 1]
  t.match((await app.inject({ method: 'GET', url: `/v1/alert-rules/versions/${oldest.id}`, headers })).json(), { version: sha256(v1), active: false, document: v1 })
  t.equal((await app.inject({ method: 'GET', url: '/v1/alert-rules/versions/999999', headers })).json().code, 'VIGIL_ERR_NOT_FOUND')
  const nurse = await userWithLogin(app, headers, ['nurse'], 'rules-version-nurse@example.org')
  t.equal((await app.inject({ method: 'GET', url: `/v1/alert-rules/versions/${newest.id}`, headers: nurse.headers })).json().document, null, 'the document (webhook URLs) is for admins only')
})

t.test('PUT /v1/alert-rules: a YAML alias bomb is a 400 with the reason, not a 500', async (t) => {
  // "Billion laughs": each level doubles the references to the level before it.
  const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
  for (let i = 1; i < 10; i++) levels.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`)
  const before = (await get('')).json().version
  const res = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: levels.join('\n') + '\nrules: []\n' } })
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'VIGIL_ERR_RULES_SYNTAX')
  t.match(res.json().details, [{ path: '', message: /alias/i }])
  t.equal((await get('')).json().version, before, 'the active rules are unchanged')
})

t.test('GET /v1/alert-rules: webhook URLs (and the document quoting them) are shown to admins only', async (t) => {
  const before = (await get('')).json().document as string
  const withHook = `${before}\nwebhooks:\n  - { id: pager, url: "https://pager.example.org/hook/s3cr3t-capability", secretEnv: VIGIL_WEBHOOK_PAGER }\n`
  t.equal((await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: withHook } })).statusCode, 200)
  t.teardown(async () => { await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: before } }) })
  const nurse = await userWithLogin(app, headers, ['nurse'], 'rules-nurse@example.org')
  const seen = await app.inject({ method: 'GET', url: '/v1/alert-rules', headers: nurse.headers })
  t.equal(seen.statusCode, 200)
  t.notOk(seen.body.includes('s3cr3t-capability'), 'a nurse (rules:read) does not see the URL anywhere')
  t.match(seen.json(), { webhooks: [{ id: 'pager', url: null, minSeverity: 'low' }], document: null })
  t.match((await get('')).json(), { webhooks: [{ id: 'pager', url: 'https://pager.example.org/hook/s3cr3t-capability' }], document: withHook }, 'an admin does')
})

t.test('a rules file Vigil may not write: 409, nothing changes', { skip: process.getuid?.() === 0 ? 'root writes anywhere' : false }, async (t) => {
  await fs.chmod(dir, 0o555)
  t.teardown(() => fs.chmod(dir, 0o755))
  const res = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: rulesAt(99) } })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'VIGIL_ERR_CONFLICT')
  t.not(engine.rules().version, sha256(rulesAt(99)))
})

t.test('a rule removed from the file ends its open conditions', async (t) => {
  t.equal(changes.filter((c) => c.ruleId === 'tachycardia').at(-1)?.status, 'firing', 'tachycardia is firing (115 above 110)')
  const before = changes.length
  const res = await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: 'rules:\n  - { id: brady, kind: threshold, metric: heart_rate, below: 40, severity: high }\n' } })
  t.equal(res.statusCode, 200)
  await engine.flush()
  t.match(changes.slice(before), [{ patientId: patient.id, ruleId: 'tachycardia', status: 'cleared', details: { reason: 'rule_removed' } }])
  const { rows } = await db.pool.query('SELECT rule_id FROM alert_rule_state WHERE patient_id = $1', [patient.id])
  t.same(rows.map((r) => r.rule_id), [], 'its state is gone')
  t.equal((await app.inject({ method: 'PUT', url: '/v1/alert-rules', headers, payload: { document: rulesAt(130) } })).statusCode, 200)
})

t.test('an invalid file at start: the last accepted version runs; with none, start-up fails', async (t) => {
  const bad = path.join(dir, 'bad', 'rules.yaml')
  await fs.mkdir(path.dirname(bad))
  await fs.writeFile(bad, 'rules:\n  - { id: x, kind: threshold, metric: heart_rate, severity: high }\n')
  const fallback = await startRulesFile({ pool: db.pool, path: bad, log })
  t.teardown(() => fallback.close())
  t.equal(fallback.current().version, sha256(rulesAt(130)), 'the last accepted version')
  t.match(fallback.lastError()?.problems, [{ path: 'rules[0].above', message: 'rules[0] (id "x"): above or below must be set' }])

  const empty = await createTestDatabase()
  const emptyDb = await openDatabase({ databaseUrl: empty.url, dataDir: '', log })
  t.teardown(async () => { await emptyDb.close(); await empty.drop() })
  await t.rejects(startRulesFile({ pool: emptyDb.pool, path: bad, log }), /VIGIL_ALERT_RULES .* is invalid: rules\[0\] \(id "x"\): above or below must be set/)
})

t.test('rule overrides API', async (t) => {
  const base = `/v1/patients/${patient.id}/rule-overrides`
  const expiresAt = new Date(Date.now() + 86_400_000).toISOString()
  const put = async (ruleId: string, payload: unknown) => await app.inject({ method: 'PUT', url: `${base}/${ruleId}`, headers, payload: payload as object })

  const ok = await put('tachycardia', { above: 140, reason: 'athlete, resting rate high', expiresAt })
  t.equal(ok.statusCode, 200)
  t.match(ok.json(), { patientId: patient.id, ruleId: 'tachycardia', parameters: { above: 140 }, setBy: `token:${tokenId}`, expiresAt, active: true })

  const refusals: Array<[string, string, unknown, number, string]> = [
    ['unknown rule', 'nope', { above: 1, reason: 'r', expiresAt }, 404, 'VIGIL_ERR_UNKNOWN_RULE'],
    ['wrong field for kind', 'tachycardia', { fallBy: 3, reason: 'r', expiresAt }, 400, 'VIGIL_ERR_VALIDATION'],
    ['no parameters', 'tachycardia', { reason: 'r', expiresAt }, 400, 'VIGIL_ERR_VALIDATION'],
    ['no reason', 'tachycardia', { above: 140, expiresAt }, 400, 'VIGIL_ERR_VALIDATION'],
    ['expiry in the past', 'tachycardia', { above: 140, reason: 'r', expiresAt: '2020-01-01T00:00:00Z' }, 400, 'VIGIL_ERR_VALIDATION'],
    ['expiry too far', 'tachycardia', { above: 140, reason: 'r', expiresAt: new Date(Date.now() + 100 * 86_400_000).toISOString() }, 400, 'VIGIL_ERR_VALIDATION'],
    ['removes every bound', 'tachycardia', { above: null, reason: 'r', expiresAt }, 400, 'VIGIL_ERR_VALIDATION']
  ]
  for (const [name, ruleId, payload, status, code] of refusals) {
    const res = await put(ruleId, payload)
    t.equal(res.statusCode, status, name)
    t.equal(res.json().code, code, name)
  }
  const unknownPatient = await app.inject({ method: 'PUT', url: '/v1/patients/00000000-0000-4000-8000-000000000000/rule-overrides/tachycardia', headers, payload: { above: 140, reason: 'r', expiresAt } })
  t.equal(unknownPatient.statusCode, 404)
  t.equal(unknownPatient.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')

  const list = await app.inject({ method: 'GET', url: base, headers })
  t.match(list.json().items, [{ ruleId: 'tachycardia', reason: 'athlete, resting rate high' }])
  t.equal((await app.inject({ method: 'DELETE', url: `${base}/tachycardia`, headers })).statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: `${base}/tachycardia`, headers })).json().code, 'VIGIL_ERR_NOT_FOUND')

  const scale = await app.inject({ method: 'PUT', url: `/v1/patients/${patient.id}/news2-scale`, headers, payload: { spo2Scale: 2, reason: 'hypercapnic' } })
  t.match(scale.json(), { patientId: patient.id, spo2Scale: 2 })
  t.same(await engine.store.spo2Scales([patient.id]), new Map([[patient.id, 2]]))
})

t.test('GET /v1/patients/{id}/news2: the current score with sub-scores and what is missing', async (t) => {
  const other = await deps.patients.create('NEWS2 Patient')
  const url = `/v1/patients/${other.id}/news2`
  t.same((await app.inject({ method: 'GET', url, headers })).json(), { items: [] }, 'nothing seen yet')
  const ts = Date.UTC(2026, 0, 1, 8)
  engine.onAccepted([
    { patientId: other.id, deviceId, metric: 'heart_rate', value: 135, unit: '/min', ts, seq: null },
    { patientId: other.id, deviceId, metric: 'spo2', value: 93, unit: '%', ts, seq: null }
  ])
  await engine.flush()
  const res = await app.inject({ method: 'GET', url, headers })
  t.equal(res.statusCode, 200)
  t.match(res.json().items, [{
    ruleId: 'news2', at: new Date(ts).toISOString(), total: 5, band: 'medium', complete: false,
    missing: ['resp_rate', 'o2_supplemental', 'bp_systolic', 'consciousness', 'body_temp'],
    subScores: { heart_rate: 3, spo2: 2 }, redScores: ['heart_rate'], spo2Scale: 1,
    parameters: { heart_rate: { value: 135 }, spo2: { value: 93 } }
  }])
  t.equal((await app.inject({ method: 'GET', url: '/v1/patients/00000000-0000-4000-8000-000000000000/news2', headers })).statusCode, 404)
})

t.test('the alert routes are in the OpenAPI document, each with its permission checked', async (t) => {
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  for (const route of ['/v1/alert-rules', '/v1/patients/{id}/rule-overrides', '/v1/patients/{id}/rule-overrides/{ruleId}', '/v1/patients/{id}/news2', '/v1/patients/{id}/news2-scale']) {
    t.ok(doc.paths[route], route)
  }
  const unauthenticated = await app.inject({ method: 'GET', url: '/v1/alert-rules' })
  t.equal(unauthenticated.statusCode, 401)
})
