import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import { Registry } from 'prom-client'
import t from 'tap'
import type pg from 'pg'
import { startRulesFile, type RulesFile } from '../../../alerts/engine/rules-file.ts'
import { startAlertEngine } from '../../../alerts/engine/alert-engine.ts'
import type { AlertEngine } from '../../../alerts/engine/alert-engine.ts'
import type { ConditionChange, DevicePresence } from '../../../alerts/contract.ts'
import { DERIVED_DEVICE_ID } from '../../../alerts/engine/evaluate.ts'
import { createRuleStateStore, PATIENT_RULE_LOCK_SPACE } from '../../../alerts/engine/rule-state-store.ts'
import type { StoredReading } from '../../../readings/reading.ts'
import { comparePositions } from '../../../readings/spool-segments.ts'
import type { Position, RecordSpan, SpooledRecord } from '../../../readings/spool.ts'
import { openDatabase } from '../../../store/database.ts'
import type { Database } from '../../../store/database.ts'
import { createPatientStore } from '../../../patients/patients.ts'
import { createPostgresReadingStore } from '../../../readings/postgres-store.ts'
import { parseMetrics } from '../../helpers/log-capture.ts'
import { createTestDatabase } from '../../helpers/postgres.ts'
import { testKeyring } from '../../helpers/keys.ts'
import { seedEmbeddedDatabase } from '../../helpers/pglite-template.ts'
import { waitFor } from '../../helpers/wait.ts'

// Encrypts clinical free text (alert comments, override reasons) for every engine/lifecycle this file starts.
const clinicalTextKeyring = testKeyring()

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-engine-'))
const rulesPath = path.join(dir, 'alert-rules.yaml')

/** The rules file an engine here reads (the caller owns it): closed when this file's tests end. */
async function rulesFileOf (pool: pg.Pool, now?: () => number): Promise<RulesFile> {
  const rulesFile = await startRulesFile({ pool, path: rulesPath, log, now })
  t.teardown(() => rulesFile.close())
  return rulesFile
}
await fs.writeFile(rulesPath, `
rules:
  - { id: tachycardia, kind: threshold, metric: heart_rate, above: 120, for: 5m, hysteresis: 5, severity: high }
  - { id: high-hr, kind: threshold, metric: heart_rate, above: 150, severity: critical }
  - { id: news2, kind: news2, freshness: 1h, bands: { low_medium: medium, medium: high, high: critical } }
  - { id: silent, kind: no_data, after: 15m, severity: medium }
`)
const testDb = await createTestDatabase()
const postgres = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const pgliteDir = path.join(dir, 'pglite-data')
const pglite = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(pgliteDir), log })
t.teardown(async () => {
  await postgres.close()
  await pglite.close()
  await testDb.drop()
  await fs.rm(dir, { recursive: true, force: true })
})

const T0 = Date.UTC(2026, 0, 1, 8)
const MIN = 60_000
const deviceId = '22222222-2222-4222-8222-222222222222'

interface Harness {
  engine: AlertEngine
  changes: ConditionChange[]
  derived: StoredReading[]
  registry: Registry
  clock: { now: number }
}

async function start (db: Database, clock = { now: T0 }, workerThreads = 1): Promise<Harness> {
  const changes: ConditionChange[] = []
  const derived: StoredReading[] = []
  const registry = new Registry()
  const readings = createPostgresReadingStore(db.pool)
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: db.pool, rulesFile: await rulesFileOf(db.pool), workerThreads, log, registry, now: () => clock.now,
    sink: { apply: async (c) => { changes.push(...c) } },
    writeDerived: async (r) => { derived.push(...r); await readings.write(r) }
  })
  return { engine, changes, derived, registry, clock }
}

function reading (patientId: string, metric: string, value: number, ts: number): StoredReading {
  return { patientId, deviceId, metric, value, unit: '', ts, seq: null }
}

async function metric (registry: Registry, name: string): Promise<number> {
  return parseMetrics(await registry.metrics()).get(name) ?? Number.NaN
}

for (const [name, db] of [['postgres', postgres], ['pglite', pglite]] as const) {
  t.test(`${name}: rule state survives a restart of the engine`, async (t) => {
    const patient = await createPatientStore(db.pool).create('Restart Patient')
    const first = await start(db)
    for (let i = 0; i < 9; i++) first.engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + i * 30_000)])
    await first.engine.flush()
    t.same(first.changes, [], '4 minutes of 130 /min: nothing yet')
    await first.engine.close()

    const second = await start(db)
    t.teardown(() => second.engine.close())
    second.engine.onAccepted([reading(patient.id, 'heart_rate', 132, T0 + 5 * MIN)])
    await second.engine.flush()
    t.match(second.changes, [{ patientId: patient.id, ruleId: 'tachycardia', status: 'firing', details: { breachSince: T0 } }],
      'the sustained-since time from before the restart counts')
  })
}

t.test('readings are evaluated in batches in worker threads', async (t) => {
  const h = await start(postgres, { now: T0 }, 2)
  t.teardown(() => h.engine.close())
  const patients = createPatientStore(postgres.pool)
  const ids: string[] = []
  for (let i = 0; i < 40; i++) ids.push((await patients.create(`Batch ${i}`)).id)
  const started = Date.now()
  h.clock.now = started
  // 40 patients × 25 readings, as ingest hands them over (one message at a time); every
  // fifth patient above 150 /min.
  for (let k = 0; k < 25; k++) {
    for (const [i, id] of ids.entries()) h.engine.onAccepted([reading(id, 'heart_rate', i % 5 === 0 ? 155 : 80, T0 + k * 1000)])
  }
  await h.engine.flush()
  t.equal(await metric(h.registry, 'vigil_alert_readings_evaluated_total'), 1000)
  const batches = await metric(h.registry, 'vigil_alert_evaluation_seconds_count')
  t.ok(batches >= 1 && batches <= 3, `1000 readings in ${batches} batch(es), not one task per reading`)
  const fired = h.changes.filter((c) => c.ruleId === 'high-hr' && c.ongoing === undefined)
  t.equal(fired.length, 8, 'one condition per breaching patient')
  t.same(new Set(fired.map((c) => c.patientId)), new Set(ids.filter((_, i) => i % 5 === 0)))
  const count = await metric(h.registry, 'vigil_alert_reading_to_condition_seconds_count')
  t.equal(count, h.changes.length, 'latency observed for each change')
  t.comment(`reading→condition with a controllable clock is 0 by construction; batch evaluation time: ${
    (await metric(h.registry, 'vigil_alert_evaluation_seconds_sum') / batches * 1000).toFixed(1)} ms per batch (${Date.now() - started} ms wall for 1000 readings)`)
})

t.test('small batches on the event loop, large ones in threads: mixed, a patient\'s state follows it, as through threads alone', async (t) => {
  const patients = createPatientStore(postgres.pool)
  // The same readings through an engine that uses threads only and one that evaluates batches of
  // up to 128 readings on the event loop; a patient's state moves between the two ways. Two
  // threads: each patient has its lane.
  const run = async (inlineReadings: number): Promise<{ changes: ConditionChange[], batches: Map<string, number>, resent: number, sent: number }> => {
    const patient = (await patients.create(`Mixed ${inlineReadings}`)).id
    const filler = (await patients.create(`Filler ${inlineReadings}`)).id
    const changes: ConditionChange[] = []
    const registry = new Registry()
    const engine = await startAlertEngine({
      keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 2, log, registry,
      writeDerived: async () => {}, sink: { apply: async (c) => { changes.push(...c) } }, flushIntervalMs: 600_000, batchSize: 100_000, inlineReadings
    })
    t.teardown(() => engine.close())
    const step = async (value: number, at: number, fillers = 0): Promise<void> => {
      engine.onAccepted([reading(patient, 'heart_rate', value, at), ...Array.from({ length: fillers }, (_, i) => reading(filler, 'heart_rate', 80, at + i))])
      await engine.flush()
    }
    await step(130, T0) // tachycardia (above 120 for 5 min): breached since T0
    await step(100, T0 + 2 * MIN, 200) // a large batch: back below 115, the breach ends
    await step(130, T0 + 4 * MIN) // breached again since 4 min
    await step(130, T0 + 6 * MIN) // 2 min: not yet (a state from before the large batch would say 6)
    await step(130, T0 + 9.5 * MIN) // 5.5 min: fires
    const byPlace = new Map<string, number>()
    for (const line of (await registry.metrics()).split('\n')) {
      const m = /^vigil_alert_batches_total\{on="(\w+)"\} (\d+)/.exec(line)
      if (m !== null) byPlace.set(m[1]!, Number(m[2]))
    }
    return {
      changes: changes.filter((c) => c.patientId === patient).map((c) => ({ ...c, patientId: '' })),
      batches: byPlace,
      resent: await metric(registry, 'vigil_alert_tasks_resent_total'),
      sent: await metric(registry, 'vigil_alert_states_sent_total')
    }
  }
  const threads = await run(0)
  const mixed = await run(128)
  t.same(threads.batches, new Map([['threads', 5]]), 'threads only: every batch in a thread')
  t.same(mixed.batches, new Map([['event_loop', 4], ['threads', 1]]), 'mixed: the large batch in a thread, the rest on the event loop')
  t.match(mixed.changes.filter((c) => c.ruleId === 'tachycardia'), [{ status: 'firing', at: T0 + 9.5 * MIN }], 'fires 5 min after the breach that began after the large batch')
  t.equal(mixed.changes.filter((c) => c.ruleId === 'tachycardia').length, 1)
  t.same(mixed.changes, threads.changes, 'the same condition changes as through threads alone')
  // The engine knows who keeps a state: moving between the event loop and a thread, it is sent
  // with the task, never asked for and sent again.
  t.equal(mixed.resent, 0, 'no task sent again for a state its thread did not keep')
  t.equal(threads.resent, 0, 'threads only: each patient stays in its lane')
  t.equal(threads.sent, 2, 'threads only: each state sent once (the first batch of each patient)')
  t.ok(mixed.sent >= 4, `mixed: the patient's state sent each time it moved (${mixed.sent} states sent)`)
})

t.test('reading→condition latency on the real clock', async (t) => {
  const changes: ConditionChange[] = []
  const registry = new Registry()
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry, sink: { apply: async (c) => { changes.push(...c) } }, writeDerived: async () => {}
  })
  t.teardown(() => engine.close())
  const patients = createPatientStore(postgres.pool)
  const latencies: number[] = []
  for (let i = 0; i < 20; i++) {
    const id = (await patients.create(`Latency ${i}`)).id
    const sent = performance.now()
    engine.onAccepted([reading(id, 'heart_rate', 160, Date.now())])
    while (changes.filter((c) => c.ruleId === 'high-hr').length <= i) await new Promise((resolve) => setImmediate(resolve))
    latencies.push(performance.now() - sent)
  }
  latencies.sort((a, b) => a - b)
  t.equal(changes.filter((c) => c.ruleId === 'high-hr').length, 20)
  // Reported, not asserted (performance belongs to benchmarks).
  t.comment(`reading→condition latency over 20 single readings: p50 ${latencies[10]!.toFixed(1)} ms, max ${latencies[19]!.toFixed(1)} ms (includes the 50 ms batching wait)`)
})

t.test('overrides apply until they expire', async (t) => {
  const h = await start(postgres)
  t.teardown(() => h.engine.close())
  const patient = await createPatientStore(postgres.pool).create('Override Patient')
  await h.engine.store.putOverride({ patientId: patient.id, ruleId: 'high-hr', parameters: { above: 170 }, reason: 'r', setBy: 'user:doc', expiresAt: T0 + 10 * MIN })
  h.engine.onAccepted([reading(patient.id, 'heart_rate', 160, T0)])
  await h.engine.flush()
  // (NEWS2 scores one heart rate of 160 as 3, a red score: only high-hr is of interest here.)
  const highHr = (): ConditionChange[] => h.changes.filter((c) => c.ruleId === 'high-hr')
  t.same(highHr(), [], '160 is below the overridden 170')
  h.clock.now = T0 + 10 * MIN
  h.engine.onAccepted([reading(patient.id, 'heart_rate', 161, T0 + 10 * MIN)])
  await h.engine.flush()
  t.match(highHr(), [{ ruleId: 'high-hr', status: 'firing', details: { threshold: 150 } }], 'expired: the rule\'s own threshold')
})

for (const [name, db] of [['postgres', postgres], ['pglite', pglite]] as const) {
  t.test(`${name}: a batch's overrides and SpO2 scales in one query, the same as read apart`, async (t) => {
    const h = await start(db)
    t.teardown(() => h.engine.close())
    const patients = createPatientStore(db.pool)
    const [both, overrideOnly, scaleOnly, neither] = await Promise.all(['Both', 'Override', 'Scale', 'Neither'].map(async (n) => (await patients.create(`Settings ${n}`)).id))
    const store = h.engine.store
    await store.putOverride({ patientId: both!, ruleId: 'tachycardia', parameters: { above: 130 }, reason: 'beta blocker paused', setBy: 'user:doc', expiresAt: T0 + MIN })
    await store.putOverride({ patientId: both!, ruleId: 'high-hr', parameters: { above: 170 }, reason: 'athlete', setBy: 'user:doc', expiresAt: T0 + MIN })
    await store.putOverride({ patientId: overrideOnly!, ruleId: 'high-hr', parameters: { above: 160 }, reason: 'r', setBy: 'user:doc', expiresAt: T0 + MIN })
    await store.setSpo2Scale(both!, 2, 'user:doc', 'COPD')
    await store.setSpo2Scale(scaleOnly!, 2, 'user:doc', 'COPD')
    const ids = [both!, overrideOnly!, scaleOnly!, neither!]
    const settings = await store.settingsOf(ids)
    t.same(settings, { overrides: await store.overridesOf(ids), scales: await store.spo2Scales(ids) })
    t.same(settings.overrides.get(both!)?.map((o) => o.ruleId), ['high-hr', 'tachycardia'], 'in rule order')
    t.equal(settings.overrides.get(both!)?.[1]?.reason, 'beta blocker paused', 'reasons decrypted')
    t.same([...settings.scales], [[both, 2], [scaleOnly, 2]])
    t.same(await store.settingsOf([]), { overrides: new Map(), scales: new Map() })
  })
}

t.test('shared state: the versions and settings read with the locks are those read apart, and read under the locks', async (t) => {
  const patients = createPatientStore(postgres.pool)
  const [withState, withSettings, bare] = await Promise.all(['State', 'Settings', 'Bare'].map(async (n) => (await patients.create(`Locked ${n}`)).id))
  const store = createRuleStateStore(postgres.pool, clinicalTextKeyring)
  await store.saveStates([{ patientId: withState!, state: { tachycardia: { firing: false }, bradycardia: { firing: true } } }])
  await store.putOverride({ patientId: withSettings!, ruleId: 'high-hr', parameters: { above: 170 }, reason: 'athlete', setBy: 'user:doc', expiresAt: T0 + MIN })
  await store.setSpo2Scale(withSettings!, 2, 'user:doc', 'COPD')
  const ids = [bare!, withState!, withSettings!]
  const apart = { versions: await store.stateVersions(ids), ...(await store.settingsOf(ids)) }
  t.match(apart.versions.get(withState!), /^bradycardia \d+\.\d+ tachycardia \d+\.\d+$/, 'a version per stored rule')
  const seen = await store.withPatientsLocked(ids, async (client, reads) => {
    // The locks are held: another session cannot take one of them.
    const other = await postgres.pool.connect()
    try {
      const { rows } = await other.query('SELECT pg_try_advisory_lock($1, hashtext($2)) AS got', [PATIENT_RULE_LOCK_SPACE, withState])
      t.equal(rows[0].got, false, 'a patient\'s lock is held while the task runs')
    } finally {
      other.release()
    }
    return reads
  }, { read: true })
  t.same(seen, apart)
  t.equal(await store.withPatientsLocked(ids, async (_client, reads) => reads), null, 'no reads unless asked')
  await t.rejects(store.withPatientsLocked([withState!, "x'); SELECT 1; --"], async () => t.fail('ran')), RangeError, 'an id that is not a uuid is refused before anything is sent')
})

t.test('NEWS2 scores are stored as readings', async (t) => {
  const h = await start(postgres)
  t.teardown(() => h.engine.close())
  const patient = await createPatientStore(postgres.pool).create('NEWS2 Patient')
  const vitals: Array<[string, number]> = [['resp_rate', 26], ['spo2', 95], ['o2_supplemental', 0], ['bp_systolic', 120], ['heart_rate', 95], ['consciousness', 0], ['body_temp', 37]]
  h.engine.onAccepted(vitals.map(([m, v]) => reading(patient.id, m, v, T0)))
  await h.engine.flush()
  t.match(h.changes, [{ ruleId: 'news2', status: 'firing', severity: 'high', details: { total: 5, band: 'medium', complete: true } }])
  const stored = await createPostgresReadingStore(postgres.pool).query({ patientId: patient.id, metric: 'news2_score', limit: 10 })
  t.match(stored, [{ deviceId: DERIVED_DEVICE_ID, value: 5, ts: T0, unit: '{score}' }])
})

t.test('no-data evaluation through the engine fires once and is stored', async (t) => {
  const h = await start(postgres)
  t.teardown(() => h.engine.close())
  const patient = await createPatientStore(postgres.pool).create('Silent Patient')
  h.clock.now = T0 + 60 * MIN
  const presence: DevicePresence[] = [{ deviceId, patientId: patient.id, connected: false, changedAt: T0 + 30 * MIN, lastReadingAt: T0 + 29 * MIN, batteryPercent: null, lastStatusAt: null }]
  const first = await h.engine.evaluateNoData(presence)
  t.match(first, [{ ruleId: 'silent', status: 'firing', details: { cause: 'disconnected', disconnectedSince: T0 + 30 * MIN } }])
  t.same(await h.engine.evaluateNoData(presence), [], 'still silent: no second change')
  t.same(h.changes.filter((c) => c.ruleId === 'silent').length, 1, 'handed to the sink by evaluateNoData itself')
  t.match(h.engine.rulesView(), { version: /^[0-9a-f]{64}$/, escalationPolicies: [], webhooks: [] })
  // A reading arrives: the condition ends in the batch.
  h.engine.onAccepted([reading(patient.id, 'heart_rate', 70, T0 + 61 * MIN)])
  await h.engine.flush()
  t.match(h.changes.filter((c) => c.ruleId === 'silent').map((c) => c.status), ['firing', 'cleared'])
})

t.test('a no-data pass between two batches: the next batch starts from the state the pass stored, not the one the alert thread kept', async (t) => {
  const h = await start(postgres)
  t.teardown(() => h.engine.close())
  const patient = await createPatientStore(postgres.pool).create('Silent Between Batches')
  h.clock.now = T0 + 10 * MIN
  h.engine.onAccepted([reading(patient.id, 'heart_rate', 70, T0 + 10 * MIN)])
  await h.engine.flush() // the alert thread now keeps this patient's state: not silent
  h.clock.now = T0 + 60 * MIN
  const presence: DevicePresence[] = [{ deviceId, patientId: patient.id, connected: false, changedAt: T0 + 30 * MIN, lastReadingAt: T0 + 10 * MIN, batteryPercent: null, lastStatusAt: null }]
  t.match(await h.engine.evaluateNoData(presence), [{ ruleId: 'silent', status: 'firing' }])
  h.engine.onAccepted([reading(patient.id, 'heart_rate', 70, T0 + 61 * MIN)])
  await h.engine.flush()
  t.same(h.changes.filter((c) => c.ruleId === 'silent').map((c) => c.status), ['firing', 'cleared'], 'the reading ends the condition the pass opened')
})

t.test('readings that arrive during a batch wait for their own window, not a batch of their own right behind it', async (t) => {
  const registry = new Registry()
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  let applied = 0
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry, writeDerived: async () => {},
    flushIntervalMs: 1000,
    sink: { async apply () { if (applied++ === 0) await gate } }
  })
  t.teardown(() => engine.close())
  const patients = createPatientStore(postgres.pool)
  const first = (await patients.create('Window Patient 1')).id
  const second = (await patients.create('Window Patient 2')).id
  const batches = async (): Promise<number> => await metric(registry, 'vigil_alert_evaluation_seconds_count')
  engine.onAccepted([reading(first, 'heart_rate', 165, Date.now())])
  // The first batch (after its 1 s window) hands a change to the sink, which holds it.
  await waitFor('the first batch at the sink', () => applied === 1, { timeoutMs: 10_000, everyMs: 10 })
  const straggler = Date.now()
  engine.onAccepted([reading(second, 'heart_rate', 80, Date.now())])
  release()
  await waitFor('the second batch', async () => await batches() === 2, { timeoutMs: 10_000, everyMs: 5 })
  // Before the fix it followed the first batch at once, a few milliseconds after the release.
  const waited = Date.now() - straggler
  t.ok(waited >= 990, `the reading that came during the batch waited out its own 1 s window (${waited} ms), not a batch of one right behind`)
  t.equal(await metric(registry, 'vigil_alert_readings_evaluated_total'), 2, 'both readings evaluated')
})

t.test('a failed batch is retried: no condition change is lost', async (t) => {
  const changes: ConditionChange[] = []
  let failures = 1
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry: new Registry(), writeDerived: async () => {},
    sink: {
      async apply (c) {
        if (failures-- > 0) throw new Error('lifecycle unavailable')
        changes.push(...c)
      }
    }
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create('Retry Patient')
  engine.onAccepted([reading(patient.id, 'heart_rate', 165, T0)])
  await engine.flush()
  t.same(changes, [], 'the first attempt failed')
  const deadline = Date.now() + 20_000
  while (changes.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  t.match(changes.filter((c) => c.ruleId === 'high-hr'), [{ patientId: patient.id, status: 'firing' }], 'delivered on the retry')
})

t.test('a full evaluation queue drops the oldest readings from evaluation, counted', async (t) => {
  const registry = new Registry()
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry, writeDerived: async () => {},
    sink: { apply: async () => {} }, maxQueued: 10, flushIntervalMs: 600_000, batchSize: 1000
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create('Queue Patient')
  for (let i = 0; i < 25; i++) engine.onAccepted([reading(patient.id, 'heart_rate', 80, T0 + i * 1000)])
  await engine.flush()
  const dropped = await metric(registry, 'vigil_alert_readings_dropped_total')
  const evaluated = await metric(registry, 'vigil_alert_readings_evaluated_total')
  t.ok(dropped > 0, `${dropped} dropped`)
  t.equal(dropped + evaluated, 25, 'every reading either evaluated or counted as dropped')
  t.ok(evaluated <= 10)
})

/** `pool`, whose next `control.failSaves` rule-state saves fail as if the database were down. */
function failingSaves (base: pg.Pool): { pool: pg.Pool, control: { failSaves: number } } {
  const control = { failSaves: 0 }
  const pool = new Proxy(base, {
    get (target, key, receiver) {
      if (key !== 'query') return Reflect.get(target, key, receiver)
      return async (config: unknown, ...rest: unknown[]) => {
        if ((config as { name?: string }).name === 'vigil-save-rule-states' && control.failSaves > 0) {
          control.failSaves--
          throw new Error('database unavailable')
        }
        return await (target.query as (...a: unknown[]) => Promise<unknown>).call(target, config, ...rest)
      }
    }
  })
  return { pool, control }
}

t.test('the evaluation mark: reported once the state that came of the readings is saved, never past a queued reading', async (t) => {
  const registry = new Registry()
  const changes: ConditionChange[] = []
  const marks: Position[] = []
  const { pool, control } = failingSaves(postgres.pool)
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry,
    sink: { apply: async (c) => { changes.push(...c) } }, writeDerived: async () => {},
    flushIntervalMs: 600_000, batchSize: 2, stateSaveIntervalMs: 300, onEvaluated: (p) => { marks.push(p) }
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create('Mark Patient')
  const span = (i: number): RecordSpan => ({ start: { segment: 1, offset: i * 100 }, end: { segment: 1, offset: (i + 1) * 100 } })
  const evaluated = async (): Promise<number> => await metric(registry, 'vigil_alert_readings_evaluated_total')

  // Two readings make a batch at once; its state waits unsaved (no condition changed).
  engine.onAccepted([reading(patient.id, 'heart_rate', 80, T0)], span(0))
  engine.onAccepted([reading(patient.id, 'heart_rate', 81, T0 + 1000)], span(1))
  await waitFor('the first batch', async () => await evaluated() === 2)
  t.same(marks, [], 'evaluated, not saved: no mark')
  // A third waits in the queue (a long window) while the state is saved.
  engine.onAccepted([reading(patient.id, 'heart_rate', 82, T0 + 2000)], span(2))
  await waitFor('the save', () => marks.length > 0)
  t.strictSame(marks, [span(2).start], 'saved: the mark stops at the record of the oldest queued reading')
  await engine.flush()
  t.strictSame(marks.at(-1), span(2).end, 'all evaluated and saved: the end of the last record')

  // A breach changes a condition: its state is saved with the batch, but that save fails.
  control.failSaves = 1
  engine.onAccepted([reading(patient.id, 'heart_rate', 165, T0 + 3000)], span(3))
  engine.onAccepted([reading(patient.id, 'heart_rate', 166, T0 + 4000)], span(4))
  await waitFor('the breach handed over', () => changes.some((c) => c.ruleId === 'high-hr'))
  await waitFor('the failed save', async () => await metric(registry, 'vigil_alert_state_save_failures_total') === 1)
  t.strictSame(marks.at(-1), span(2).end, 'a failed save does not move the mark')
  await engine.flush()
  t.strictSame(marks.at(-1), span(4).end, 'the next save does')
  t.ok(marks.every((m, i) => i === 0 || comparePositions(marks[i - 1]!, m) <= 0), 'the mark never goes back')
})

t.test('replay: spooled records are evaluated as when accepted, derived readings left out, and skipped where the saved state had them', async (t) => {
  const registry = new Registry()
  const changes: ConditionChange[] = []
  const marks: Position[] = []
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry,
    sink: { apply: async (c) => { changes.push(...c) } }, writeDerived: async () => {}, onEvaluated: (p) => { marks.push(p) }
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create('Replay Patient')
  // Evaluated and saved before the "crash": the first breach.
  engine.onAccepted([reading(patient.id, 'heart_rate', 160, T0)])
  await engine.flush()
  t.equal(changes.filter((c) => c.ruleId === 'high-hr').length, 1)
  const record = (i: number, readings: StoredReading[]): SpooledRecord => ({ readings, appendedAt: T0 + i * 1000, start: { segment: 3, offset: i * 100 }, end: { segment: 3, offset: (i + 1) * 100 } })
  async function * backlog (): AsyncGenerator<SpooledRecord[]> {
    // The spool holds that reading too (the mark was behind it), then a derived score and the clearing.
    yield [record(0, [reading(patient.id, 'heart_rate', 160, T0)])]
    yield [record(1, [{ ...reading(patient.id, 'heart_rate', 20, T0 + 500), deviceId: DERIVED_DEVICE_ID }]), record(2, [reading(patient.id, 'heart_rate', 70, T0 + 1000)])]
  }
  t.equal(await engine.replay(backlog()), 2, 'two readings replayed; the derived one is not evaluated')
  t.same(changes.filter((c) => c.ruleId === 'high-hr').map((c) => c.status), ['firing', 'cleared'],
    'the reading the saved state had seen is skipped (no second firing); the new one clears')
  t.same(changes.filter((c) => c.ruleId === 'bradycardia'), [], 'the derived reading was not evaluated')
  t.equal(changes.find((c) => c.status === 'cleared')!.at, T0 + 1000)
  t.strictSame(marks.at(-1), record(2, []).end, 'the mark follows the replay')
  t.equal(await metric(registry, 'vigil_alert_readings_replayed_total'), 2)
})

t.test('replay: a batch that fails stops it, and no mark is reported again until the next start', async (t) => {
  const marks: Position[] = []
  let failing = true
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry: new Registry(),
    sink: { apply: async () => { if (failing) throw new Error('lifecycle unavailable') } }, writeDerived: async () => {}, onEvaluated: (p) => { marks.push(p) }
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create('Failed Replay Patient')
  let read = 0
  async function * backlog (): AsyncGenerator<SpooledRecord[]> {
    for (let i = 0; i < 3; i++) {
      read++
      yield [{ readings: [reading(patient.id, 'heart_rate', 165 + i, T0 + i * 1000)], appendedAt: T0, start: { segment: 1, offset: i * 100 }, end: { segment: 1, offset: (i + 1) * 100 } }]
    }
  }
  await t.rejects(engine.replay(backlog()), /failed while replaying/)
  t.equal(read, 1, 'it read no further than the batch that failed')
  failing = false
  engine.onAccepted([reading(patient.id, 'heart_rate', 80, T0 + 10_000)], { start: { segment: 1, offset: 300 }, end: { segment: 1, offset: 400 } })
  await engine.flush()
  t.ok(marks.length > 0 ? marks.every((m) => comparePositions(m, { segment: 1, offset: 0 }) <= 0) : true,
    `readings evaluated since do not move the mark past the record whose batch failed (${JSON.stringify(marks)})`)
})

/** An engine as one of several processes on one Postgres (sharedState), a new patient, and how many states its tasks have carried. */
async function sharedStateEngine (t: { teardown: (fn: () => unknown) => void }, patientName: string) {
  const registry = new Registry()
  const changes: ConditionChange[] = []
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool: postgres.pool, rulesFile: await rulesFileOf(postgres.pool), workerThreads: 1, log, registry,
    sharedState: true, sink: { apply: async (c) => { changes.push(...c) } }, writeDerived: async () => {}, now: () => T0 + 10 * MIN
  })
  t.teardown(() => engine.close())
  const patient = await createPatientStore(postgres.pool).create(patientName)
  const sent = async (): Promise<number> => await metric(registry, 'vigil_alert_states_sent_total')
  return { registry, changes, engine, patient, sent }
}

t.test('shared state (several processes on one Postgres): a state the database holds unchanged is not sent to the thread again; a changed one is', async (t) => {
  const { changes, engine, patient, sent } = await sharedStateEngine(t, 'Shared State')

  engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0)])
  await engine.flush()
  t.equal(await sent(), 1, 'the first evaluation sends the state read from the database')
  for (let i = 1; i <= 3; i++) {
    engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + i * MIN)])
    await engine.flush()
  }
  t.equal(await sent(), 1, 'read again under the lock each batch, equal to the thread\'s copy: not sent again')

  // Another process evaluated this patient meanwhile: its state in the database moved on.
  await postgres.pool.query(`UPDATE alert_rule_state SET state = jsonb_set(state, '{breachSince}', to_jsonb($2::bigint)) WHERE patient_id = $1 AND rule_id = 'tachycardia'`,
    [patient.id, T0 - 10 * MIN])
  engine.onAccepted([reading(patient.id, 'heart_rate', 131, T0 + 4 * MIN)])
  await engine.flush()
  t.equal(await sent(), 2, 'the changed state is sent')
  t.match(changes.filter((c) => c.ruleId === 'tachycardia'), [{ status: 'firing', details: { breachSince: T0 - 10 * MIN } }],
    'and evaluated: the breach the other process saw began 14 minutes before this reading, past the 5 minutes')
})

t.test('shared state: a state another process deleted or rewrote is read again, though its content alone would not say so', async (t) => {
  const { changes, engine, patient, sent } = await sharedStateEngine(t, 'Shared State Deleted')
  for (let i = 0; i <= 4; i++) {
    engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + i * MIN)])
    await engine.flush()
  }
  t.equal(await sent(), 1, 'unchanged in the database: sent once')
  t.same(changes.filter((c) => c.ruleId === 'tachycardia'), [], 'a 4-minute breach does not fire')

  // Another process cleared this patient's tachycardia state (its breach began anew there).
  await postgres.pool.query(`DELETE FROM alert_rule_state WHERE patient_id = $1 AND rule_id = 'tachycardia'`, [patient.id])
  engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + 6 * MIN)])
  await engine.flush()
  t.equal(await sent(), 2, 'the deleted row is seen: the state is read and sent again')
  t.same(changes.filter((c) => c.ruleId === 'tachycardia'), [],
    'and evaluated from the database: the breach starts at this reading, not 6 minutes earlier as the kept copy said')

  // Rewritten with the very content this process holds: a write all the same, read again.
  await postgres.pool.query(`UPDATE alert_rule_state SET state = state WHERE patient_id = $1`, [patient.id])
  engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + 7 * MIN)])
  await engine.flush()
  t.equal(await sent(), 3, 'a rewritten row is read again')
  engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0 + 8 * MIN)])
  await engine.flush()
  t.equal(await sent(), 3, 'and then kept: this process\'s own writes do not count as changes')
})

t.test('shared state: a batch whose commit failed is retried from the committed state, not from the copy its save left behind', async (t) => {
  // A deferred trigger fails COMMIT while the flag is set: the save itself succeeds, so the engine
  // has updated its copy (and remembered the rows' new marks) when the transaction rolls back.
  await postgres.pool.query(`
    CREATE TABLE fail_commit (fail boolean NOT NULL);
    INSERT INTO fail_commit VALUES (false);
    CREATE FUNCTION fail_commit_check () RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF (SELECT fail FROM fail_commit) THEN RAISE EXCEPTION 'commit refused (test)'; END IF; RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER fail_commit_check AFTER INSERT OR UPDATE ON alert_rule_state
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit_check ();`)
  t.teardown(async () => { await postgres.pool.query('DROP TRIGGER fail_commit_check ON alert_rule_state; DROP FUNCTION fail_commit_check (); DROP TABLE fail_commit') })
  const { registry, engine, patient, sent } = await sharedStateEngine(t, 'Shared State Commit')
  engine.onAccepted([reading(patient.id, 'heart_rate', 130, T0)])
  await engine.flush()
  t.equal(await sent(), 1)

  await postgres.pool.query('UPDATE fail_commit SET fail = true')
  engine.onAccepted([reading(patient.id, 'heart_rate', 80, T0 + MIN)])
  await engine.flush()
  t.equal(await metric(registry, 'vigil_alert_batch_failures_total'), 1, 'the commit failed: the batch waits for its retry')
  const stored = await postgres.pool.query(`SELECT state FROM alert_rule_state WHERE patient_id = $1 AND rule_id = 'tachycardia'`, [patient.id])
  t.equal(stored.rows[0].state.breachSince, T0, 'the database still holds the breach that began at T0')

  await postgres.pool.query('UPDATE fail_commit SET fail = false')
  await waitFor('the retry', async () => await metric(registry, 'vigil_alert_readings_evaluated_total') === 2, { timeoutMs: 10_000 })
  t.equal(await sent(), 2, 'the retry read the state again: the copy\'s marks were of a transaction that never committed')
  engine.onAccepted([reading(patient.id, 'heart_rate', 80, T0 + 2 * MIN)])
  await engine.flush()
  t.equal(await sent(), 2, 'and the committed retry is remembered: not read again')
})

t.test('settings kept by one process: its own writes are seen at once; several processes (shared state) read them every batch', async (t) => {
  const { createRuleStateStore } = await import('../../../alerts/engine/rule-state-store.ts')
  const patient = (await createPatientStore(postgres.pool).create('Cached Settings')).id
  const single = createRuleStateStore(postgres.pool, clinicalTextKeyring, { cacheSettings: true })
  const shared = createRuleStateStore(postgres.pool, clinicalTextKeyring)
  const rules = async (store: typeof single): Promise<string[]> => ((await store.settingsOf([patient])).overrides.get(patient) ?? []).map((o) => o.ruleId)

  t.same(await rules(single), [], 'nothing set')
  await single.putOverride({ patientId: patient, ruleId: 'high-hr', parameters: { above: 170 }, reason: 'athlete', setBy: 'user:doc', expiresAt: T0 + MIN })
  t.same(await rules(single), ['high-hr'], 'an override this store wrote is seen at the next batch')
  await single.setSpo2Scale(patient, 2, 'user:doc', 'COPD')
  t.equal((await single.settingsOf([patient])).scales.get(patient), 2, 'and a scale')
  // Written behind its back (what another process would do): the kept settings do not see it,
  // which is why only a process alone on its database keeps them.
  await postgres.pool.query(`DELETE FROM patient_rule_overrides WHERE patient_id = $1`, [patient])
  t.same(await rules(single), ['high-hr'], 'kept: not read again')
  t.same(await rules(shared), [], 'a store without the cache reads the database each time')
  await single.putOverride({ patientId: patient, ruleId: 'tachycardia', parameters: { above: 130 }, reason: 'r', setBy: 'user:doc', expiresAt: T0 + MIN })
  t.same(await rules(single), ['tachycardia'], 'its next write reads the patient again')
  t.ok(await single.deleteOverride(patient, 'tachycardia'))
  t.same(await rules(single), [], 'a delete is seen at once')
})

/** An engine alone on its database (no sharedState); its rule-state saves fail while `failSaves` > 0. */
async function oneProcessEngine (t: { teardown: (fn: () => unknown) => void }, db: Database, o: { stateSaveIntervalMs: number, clock?: { now: number }, rulesFile?: RulesFile }) {
  const registry = new Registry()
  const changes: ConditionChange[] = []
  const { pool, control } = failingSaves(db.pool)
  const clock = o.clock ?? { now: T0 + 10 * MIN }
  const engine = await startAlertEngine({
    keyring: clinicalTextKeyring, pool, rulesFile: o.rulesFile ?? await rulesFileOf(db.pool), workerThreads: 1, log, registry, now: () => clock.now,
    sink: { apply: async (c) => { changes.push(...c) } }, writeDerived: async () => {}, flushIntervalMs: 5, stateSaveIntervalMs: o.stateSaveIntervalMs
  })
  t.teardown(() => engine.close())
  return {
    engine,
    changes,
    control,
    metric: async (name: string): Promise<number> => await metric(registry, name),
    evaluated: async (): Promise<number> => await metric(registry, 'vigil_alert_readings_evaluated_total'),
    stored: async (patientId: string): Promise<Record<string, any>> => {
      const { rows } = await db.pool.query('SELECT rule_id, state FROM alert_rule_state WHERE patient_id = $1', [patientId])
      return Object.fromEntries(rows.map((r: { rule_id: string, state: unknown }) => [r.rule_id, r.state]))
    }
  }
}

for (const [name, db] of [['postgres', postgres], ['pglite', pglite]] as const) {
  t.test(`${name}: one process saves rule state with a condition change, and what earlier batches left unsaved; close saves the rest`, async (t) => {
    const { engine, changes, evaluated, stored } = await oneProcessEngine(t, db, { stateSaveIntervalMs: 60_000 })
    const patients = createPatientStore(db.pool)
    const calm = (await patients.create('Calm Patient')).id
    engine.onAccepted([reading(calm, 'heart_rate', 80, T0)])
    await waitFor('the first batch', async () => await evaluated() === 1)
    t.same(await stored(calm), {}, 'a batch that changes no condition: its state waits in memory')
    t.match((await engine.currentStates([calm])).get(calm), { tachycardia: { breachSince: null } }, 'and is what the engine reports')
    const racing = (await patients.create('Racing Patient')).id
    engine.onAccepted([reading(racing, 'heart_rate', 165, T0 + MIN)])
    await waitFor('the second batch', async () => await evaluated() === 2)
    t.match(changes, [{ patientId: racing, ruleId: 'high-hr', status: 'firing' }])
    t.match(await stored(racing), { 'high-hr': { firing: true } }, 'a batch that changes a condition saves its state before it ends')
    t.match(await stored(calm), { tachycardia: { breachSince: null } }, 'and the states earlier batches left unsaved')
    const quiet = (await patients.create('Quiet Patient')).id
    engine.onAccepted([reading(quiet, 'heart_rate', 70, T0)])
    await waitFor('the third batch', async () => await evaluated() === 3)
    t.same(await stored(quiet), {}, 'unsaved again')
    await engine.close()
    t.match(await stored(quiet), { tachycardia: { breachSince: null } }, 'close saves what waits')
  })

  t.test(`${name}: one process: a failed save in a batch that changed a condition keeps the state and tries again; the batch is not evaluated again`, async (t) => {
    const { engine, changes, control, metric, evaluated, stored } = await oneProcessEngine(t, db, { stateSaveIntervalMs: 100 })
    const patient = (await createPatientStore(db.pool).create('Failed Save Patient')).id
    control.failSaves = 1
    engine.onAccepted([reading(patient, 'heart_rate', 165, T0)])
    await waitFor('the failed save', async () => await metric('vigil_alert_state_save_failures_total') === 1)
    await waitFor('the state saved on the next try, after the interval', async () => (await stored(patient))['high-hr']?.firing === true)
    t.equal(changes.filter((c) => c.ruleId === 'high-hr').length, 1, 'the change was delivered once')
    t.equal(await metric('vigil_alert_batch_failures_total'), 0, 'the batch did not fail')
    t.equal(await evaluated(), 1, 'its reading was evaluated once')
  })

  t.test(`${name}: one process: a no-data pass's state is not overwritten by an older one left unsaved`, async (t) => {
    const clock = { now: T0 + 10 * MIN }
    const { engine, evaluated, stored } = await oneProcessEngine(t, db, { stateSaveIntervalMs: 60_000, clock })
    const patient = (await createPatientStore(db.pool).create('Silent Unsaved Patient')).id
    engine.onAccepted([reading(patient, 'heart_rate', 70, T0 + 10 * MIN)])
    await waitFor('the batch', async () => await evaluated() === 1)
    clock.now = T0 + 60 * MIN
    const presence: DevicePresence[] = [{ deviceId, patientId: patient, connected: false, changedAt: T0 + 30 * MIN, lastReadingAt: T0 + 10 * MIN, batteryPercent: null, lastStatusAt: null }]
    t.match(await engine.evaluateNoData(presence), [{ ruleId: 'silent', status: 'firing' }])
    await engine.flush()
    t.match(await stored(patient), { silent: { firing: true }, tachycardia: { breachSince: null } }, 'the pass\'s state stays; the batch\'s other rules are saved')
  })

  t.test(`${name}: one process: a rule removed while its firing state waits unsaved ends its condition`, async (t) => {
    const path2 = path.join(dir, `rules-removal-${name}.yaml`)
    const both = `rules:
  - { id: high-hr-${name}, kind: threshold, metric: heart_rate, above: 150, severity: critical }
  - { id: tachy-${name}, kind: threshold, metric: heart_rate, above: 120, for: 5m, severity: high }
`
    await fs.writeFile(path2, both)
    const rulesFile = await startRulesFile({ pool: db.pool, path: path2, log })
    t.teardown(() => rulesFile.close())
    const { engine, changes, control, metric } = await oneProcessEngine(t, db, { stateSaveIntervalMs: 60_000, rulesFile })
    const patient = (await createPatientStore(db.pool).create('Removed Rule Patient')).id
    control.failSaves = 1
    engine.onAccepted([reading(patient, 'heart_rate', 165, T0)])
    await waitFor('the failed save', async () => await metric('vigil_alert_state_save_failures_total') === 1)
    t.match(changes, [{ ruleId: `high-hr-${name}`, status: 'firing' }], 'firing, its state in memory only')
    await rulesFile.replace(both.split('\n').filter((l) => !l.includes('high-hr')).join('\n'), 'test')
    await waitFor('the condition ended', () => changes.some((c) => c.ruleId === `high-hr-${name}` && c.status === 'cleared'))
    t.match(changes.at(-1), { patientId: patient, status: 'cleared', details: { reason: 'rule_removed' } })
  })
}

for (const [name, db] of [['postgres', postgres], ['pglite', pglite]] as const) {
  t.test(`${name}: alert_rule_state leaves half of each page for in-place (heap-only) updates`, async (t) => {
    const { rows } = await db.pool.query<{ reloptions: string[] | null }>("SELECT reloptions FROM pg_class WHERE relname = 'alert_rule_state'")
    t.same(rows[0]?.reloptions, ['fillfactor=50'], 'migration 011')
  })
}
