/**
 * Alert engine throughput and reading→condition latency, on this machine:
 *   npx tsx bench/alert-engine.ts [--patients 2000] [--seconds 10] [--rate 2000]
 * Needs PostgreSQL on 127.0.0.1:5432 (a throwaway database is created and dropped).
 * 1. The pure evaluator on one thread (readings/s) with the shipped rules.
 * 2. The engine (worker threads, state in Postgres) at a steady offered rate, every reading
 *    crossing a threshold so each one causes a condition change: latency from onAccepted to
 *    the sink, p50/p95/p99/max.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pino from 'pino'
import { Registry } from 'prom-client'
import { startAlertEngine } from '../alerts/engine/alert-engine.ts'
import { startRulesFile } from '../alerts/engine/rules-file.ts'
import { evaluate } from '../alerts/engine/evaluate.ts'
import type { PatientBatch } from '../alerts/engine/evaluate.ts'
import { parseRuleSet } from '../alerts/engine/rule-set.ts'
import { defaultAlertRulesPath } from '../config/config.ts'
import { openDatabase } from '../store/database.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'
import { testKeyring } from '../test/helpers/keys.ts'

// Encrypts clinical free text (alert comments, override reasons) for every engine/lifecycle this file starts.
const clinicalTextKeyring = testKeyring()

const { values } = parseArgs({ options: { patients: { type: 'string', default: '2000' }, seconds: { type: 'string', default: '10' }, rate: { type: 'string', default: '2000' } } })
const patientCount = Number(values.patients)
const seconds = Number(values.seconds)
const rate = Number(values.rate)
const threads = Math.max(1, os.cpus().length)

const shipped = parseRuleSet(fs.readFileSync(defaultAlertRulesPath, 'utf8'))
if (!shipped.ok) throw new Error('shipped rules invalid')
const ids = Array.from({ length: patientCount }, (_, i) => `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`)

// 1. Pure evaluation.
{
  let states = new Map<string, PatientBatch['state']>()
  const metrics = ['heart_rate', 'spo2', 'resp_rate', 'body_temp', 'bp_systolic']
  let readings = 0
  const started = performance.now()
  for (let round = 0; performance.now() - started < 3000; round++) {
    const patients: PatientBatch[] = ids.slice(0, 500).map((id) => ({
      patientId: id, state: states.get(id) ?? {}, overrides: [], spo2Scale: 1,
      readings: metrics.map((metric, k) => ({ metric, value: [80, 96, 16, 37, 120][k]! + (round % 7), ts: round * 1000 + k, deviceId: id, receivedAt: 0 }))
    }))
    const out = evaluate({ rules: shipped.ruleSet.rules, patients, nowMs: round * 1000 })
    states = new Map(out.states.map((s) => [s.patientId, s.state]))
    readings += patients.length * metrics.length
  }
  console.log(`pure evaluate, 1 thread, ${shipped.ruleSet.rules.length} shipped rules: ${Math.round(readings / ((performance.now() - started) / 1000))} readings/s`)
}

// 2. The engine.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vigil-bench-alerts-'))
const rulesPath = path.join(dir, 'rules.yaml')
fs.writeFileSync(rulesPath, 'rules:\n  - { id: hr, kind: threshold, metric: heart_rate, above: 150, hysteresis: 0, severity: high }\n')
const testDb = await createTestDatabase()
const log = pino({ level: 'warn' })
const db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
const sentAt = new Map<string, number>()
const latencies: number[] = []
const rulesFile = await startRulesFile({ pool: db.pool, path: rulesPath, log })
const engine = await startAlertEngine({
  keyring: clinicalTextKeyring, pool: db.pool, rulesFile, workerThreads: threads, log, registry: new Registry(), writeDerived: async () => {},
  sink: {
    async apply (changes) {
      const now = performance.now()
      for (const c of changes) {
        const key = `${c.patientId}:${c.at}`
        const sent = sentAt.get(key)
        if (sent !== undefined) { latencies.push(now - sent); sentAt.delete(key) }
      }
    }
  }
})
try {
  const total = rate * seconds
  const t0 = Date.now()
  const started = performance.now()
  for (let i = 0; i < total; i++) {
    const due = started + (i / rate) * 1000
    const wait = due - performance.now()
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait))
    const patientId = ids[i % patientCount]!
    const round = Math.floor(i / patientCount)
    const ts = t0 + i
    sentAt.set(`${patientId}:${ts}`, performance.now())
    // Alternating above / below 150: every reading changes the condition.
    engine.onAccepted([{ patientId, deviceId: patientId, metric: 'heart_rate', value: round % 2 === 0 ? 160 : 80, unit: '/min', ts, seq: null }])
  }
  await engine.flush()
  const elapsed = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  const q = (p: number): string => (latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN).toFixed(1)
  console.log(`engine, ${threads} worker thread(s), ${patientCount} patients, offered ${rate} readings/s for ${seconds} s: ` +
    `${Math.round(total / elapsed)} readings/s evaluated, ${latencies.length} condition changes`)
  console.log(`reading→condition latency ms: p50 ${q(0.5)}  p95 ${q(0.95)}  p99 ${q(0.99)}  max ${q(1 - 1e-9)}`)
} finally {
  await engine.close()
  await rulesFile.close()
  await db.close()
  await testDb.drop()
  fs.rmSync(dir, { recursive: true, force: true })
}
