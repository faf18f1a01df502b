import t from 'tap'
import mqtt from 'mqtt'
import { decodeSenml } from '../../ingest/decode-senml.ts'
import { decodeTelemetry, type DecodedPayload } from '../../ingest/decode-telemetry.ts'
import {
  createRandom, deriveSeed, fuzzPayload, fuzzSettings, judgeDecode, preview, readingProblems, rejectionReasons,
  type DecodeVerdict, type PayloadKind
} from '../helpers/fuzz.ts'
import { counterByLabel, listAll, startVigilWithLogCapture } from '../helpers/log-capture.ts'

// Issue 6 item 4: mutated JSON telemetry and SenML payloads, seeded and bounded. Every payload
// decodes to readings that obey the vitals catalogue or is refused with a known reason; over
// MQTT each one is acknowledged, then either stored or kept in the rejection log, exactly once.

const { seed, cases } = fuzzSettings(10_000)
const publishedCases = Math.min(500, cases)
t.comment(`fuzz seed ${seed}: replay with FUZZ_SEED=${seed} FUZZ_CASES=${cases}`)

const decoders: Record<PayloadKind, (payload: Buffer, nowMs: number) => DecodedPayload> = {
  telemetry: decodeTelemetry,
  senml: decodeSenml
}

function outcomeOf (verdict: DecodeVerdict): string {
  return verdict.outcome === 'rejected' ? `rejected ${verdict.reason}` : verdict.outcome
}

function countInto (counts: Map<string, number>, key: string): void {
  counts.set(key, (counts.get(key) ?? 0) + 1)
}

function table (counts: Map<string, number>): string {
  return [...counts].sort(([a], [b]) => a.localeCompare(b)).map(([key, n]) => `  ${key}: ${n}`).join('\n')
}

t.test(`${cases} mutated payloads decode to valid readings or a known rejection`, async (t) => {
  const random = createRandom(deriveSeed(seed, 'decoded payloads'))
  // A fixed clock, so one seed always yields the same bytes and the same verdicts.
  const nowMs = Date.UTC(2026, 0, 15, 12)
  const outcomes = new Map<string, number>()
  const broken: string[] = []
  let slowest = { ms: 0, index: -1, mutations: [] as string[] }
  const started = performance.now()
  for (let index = 0; index < cases; index++) {
    const kind: PayloadKind = random.chance(0.5) ? 'telemetry' : 'senml'
    const { payload, mutations } = fuzzPayload(random, kind, nowMs)
    const caseStarted = performance.now()
    const verdict = judgeDecode(() => decoders[kind](payload, nowMs), nowMs)
    const ms = performance.now() - caseStarted
    if (ms > slowest.ms) slowest = { ms, index, mutations }
    countInto(outcomes, `${kind} ${outcomeOf(verdict)}`)
    if (verdict.outcome === 'broken' && broken.length < 20) {
      broken.push(`case ${index} (${kind}; ${mutations.join(', ')}): ${verdict.problem}; payload ${preview(payload)}`)
    }
  }
  t.comment(`decoded ${cases} payloads in ${Math.round(performance.now() - started)} ms; by outcome:\n${table(outcomes)}`)
  t.comment(`slowest: case ${slowest.index} (${slowest.mutations.join(', ')}) ${slowest.ms.toFixed(1)} ms`)
  t.same(broken, [], 'every payload gave valid readings or a PayloadRejection with a known reason')
  const total = (prefix: string): number => [...outcomes].filter(([key]) => key.includes(prefix)).reduce((sum, [, n]) => sum + n, 0)
  t.ok(total('accepted') > 0 && total('rejected') > 0, 'both outcomes were exercised')
  // A payload that takes seconds is a stalled broker: decoding runs on its event loop.
  t.ok(slowest.ms < 2000, `no payload took seconds to decode (slowest ${slowest.ms.toFixed(1)} ms)`)
})

t.test('a payload at the MQTT packet limit is refused by the item cap, before any schema walk', async (t) => {
  // Decoding runs on the broker's event loop (authorizePublish), so a slow payload stalls
  // every device and the API: TypeBox's Errors() took 1.9 s over 80,000 items. These shapes fit
  // MQTT_MAX_PACKET_BYTES (256 KiB) and only break the 500-item cap; they must be refused by
  // the cap itself (its message), not by a walk of every item. No timing is asserted (timings
  // belong in benchmarks); the duration is printed for the record.
  const nowMs = Date.now()
  const reading = { metric: 'heart_rate', value: 72, unit: '/min', ts: nowMs }
  const shapes: Array<[string, PayloadKind, Buffer]> = [
    ['SenML pack of 80,000 empty records', 'senml', Buffer.from(JSON.stringify(Array(80_000).fill({})))],
    ['SenML pack of 3,500 valid records', 'senml', Buffer.from(JSON.stringify(Array(3500).fill({ n: 'heart_rate', u: '/min', v: 72 })))],
    ['telemetry with 3,500 valid readings', 'telemetry', Buffer.from(JSON.stringify({ seq: 1, readings: Array(3500).fill(reading) }))]
  ]
  // Warm the decoders' JIT first, so the timings measure the payloads.
  for (const [, kind, payload] of shapes) judgeDecode(() => decoders[kind](payload.subarray(0, 2000), nowMs), nowMs)
  for (const [name, kind, payload] of shapes) {
    t.ok(payload.length < 256 * 1024, `${name} fits one MQTT packet (${payload.length} bytes)`)
    let parseMs = Infinity
    for (let i = 0; i < 3; i++) {
      const started = performance.now()
      JSON.parse(payload.toString('utf8'))
      parseMs = Math.min(parseMs, performance.now() - started)
    }
    const started = performance.now()
    const verdict = judgeDecode(() => decoders[kind](payload, nowMs), nowMs)
    const decodeMs = performance.now() - started
    t.equal(verdict.outcome, 'rejected', `${name} is rejected (${outcomeOf(verdict)})`)
    let message = ''
    try { decoders[kind](payload, nowMs) } catch (err) { message = (err as Error).message }
    t.match(message, /at most 500 items per message/, `${name} is refused by the item cap`)
    t.comment(`${name}: refused in ${decodeMs.toFixed(1)} ms; JSON.parse alone takes ${parseMs.toFixed(1)} ms`)
  }
})

interface Published {
  kind: PayloadKind
  payload: Buffer
  mutations: string[]
  /** The verdict of decoding it here just before and just after it was published. */
  before: DecodeVerdict
  after: DecodeVerdict
  acked: boolean
}

t.test(`${publishedCases} mutated payloads over MQTT: each acknowledged, then stored or rejected exactly once`, async (t) => {
  const vigil = await startVigilWithLogCapture()
  t.teardown(() => vigil.close())
  const device = await vigil.provision()
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, {
    clientId: device.deviceId, username: device.deviceId, password: device.password, reconnectPeriod: 0, protocolVersion: 4, connectTimeout: 5000
  })
  t.teardown(() => client.endAsync(true))

  const random = createRandom(deriveSeed(seed, 'published payloads'))
  const metricsBefore = await vigil.metrics()
  const firstLine = vigil.logs.lines.length
  const published: Published[] = []
  // Payloads that fit one MQTT packet: the frame limit is fuzz-mqtt.test.ts's subject.
  while (published.length < publishedCases) {
    const kind: PayloadKind = random.chance(0.5) ? 'telemetry' : 'senml'
    const { payload, mutations } = fuzzPayload(random, kind, Date.now())
    if (payload.length > 200 * 1024) continue
    published.push({ kind, payload, mutations, before: { outcome: 'broken', problem: 'not sent' }, after: { outcome: 'broken', problem: 'not sent' }, acked: false })
  }

  // Up to 8 in flight, like a device with a backlog; the broker group-commits them.
  const started = performance.now()
  let next = 0
  const publishOne = async (): Promise<void> => {
    while (next < published.length) {
      const message = published[next++]!
      const topic = `devices/${device.deviceId}/${message.kind}`
      message.before = verdictAt(message, Date.now(), device.assignedFrom)
      message.acked = await within(10_000, client.publishAsync(topic, message.payload, { qos: 1 }).then(() => true, () => false), false)
      message.after = verdictAt(message, Date.now(), device.assignedFrom)
    }
  }
  await Promise.all(Array.from({ length: 8 }, publishOne))
  t.comment(`published ${published.length} payloads in ${Math.round(performance.now() - started)} ms`)

  const unacked = published.filter((m) => !m.acked)
  t.same(unacked.map((m) => preview(m.payload, 120)), [], 'every publish got its PUBACK')

  const nowMs = Date.now()
  const rejections = await listAll<{ reason: string, payload: string, payloadBytes: number }>(vigil, `/v1/devices/${device.deviceId}/rejections`)
  const readings = await listAll<{ metric: string, value: number, unit: string, ts: string }>(vigil, `/v1/patients/${device.patientId}/readings`)

  const predicted = new Map<string, number>()
  for (const m of published) countInto(predicted, outcomeOf(m.before))
  t.comment(`by outcome (decoded here at publish time):\n${table(predicted)}`)
  t.notOk(published.some((m) => m.before.outcome === 'broken'), 'no payload broke the decoder')

  // Nothing invalid is stored.
  const invalid = readings.map((r) => ({ r, problems: readingProblems(r, nowMs) })).filter(({ problems }) => problems.length > 0)
  t.same(invalid, [], 'every stored reading has a known metric, its canonical unit, a value in range and a sane time')

  // Every message is accounted for exactly once: its readings stored, or one rejection entry
  // with the reason the decoder gives here. The server's clock read between our two decodes:
  // a SenML pack's relative times are matched in that window, and a message whose verdict
  // changed in between (a time at the 5-minute horizon) may be accounted for either way.
  const storedTimes = new Map<string, number[]>()
  for (const r of readings) storedTimes.set(r.metric, [...(storedTimes.get(r.metric) ?? []), Date.parse(r.ts)])
  const isStored = (metric: string, from: number, to: number): boolean => (storedTimes.get(metric) ?? []).some((ts) => ts >= from && ts <= to)
  const unclaimed = new Map<string, number>()
  for (const r of rejections) countInto(unclaimed, `rejected ${r.reason}`)
  const claim = (verdict: DecodeVerdict): boolean => {
    const left = unclaimed.get(outcomeOf(verdict)) ?? 0
    if (verdict.outcome !== 'rejected' || left === 0) return false
    unclaimed.set(outcomeOf(verdict), left - 1)
    return true
  }
  const sentValues = new Map<string, Set<number>>()
  const storedWhole = (m: Published): boolean => {
    const early = m.before.outcome === 'accepted' ? m.before.readings : m.after.outcome === 'accepted' ? m.after.readings : null
    if (early === null) return false
    const late = m.after.outcome === 'accepted' ? m.after.readings : early
    return early.every((r, i) => {
      const later = late[i]?.ts ?? r.ts
      if (later === r.ts) {
        const key = `${r.metric} ${new Date(r.ts).toISOString()}`
        sentValues.set(key, (sentValues.get(key) ?? new Set()).add(r.value))
      }
      return isStored(r.metric, Math.min(r.ts, later), Math.max(r.ts, later))
    })
  }
  const settled = published.filter((m) => outcomeOf(m.before) === outcomeOf(m.after))
  const unsettled = published.filter((m) => outcomeOf(m.before) !== outcomeOf(m.after))
  let accounted = 0
  for (const m of settled) if (m.before.outcome === 'accepted' ? storedWhole(m) : claim(m.before)) accounted++
  for (const m of unsettled) if (claim(m.before) || claim(m.after) || storedWhole(m)) accounted++
  const leftover = [...unclaimed].filter(([, n]) => n > 0)
  t.equal(accounted, published.length, 'rejection log entries + stored messages = messages published')
  t.same(leftover, [], 'each rejection log entry is a rejected message\'s, with the reason the decoder gives')
  if (unsettled.length > 0) t.comment(`${unsettled.length} messages crossed a time boundary while in flight and were accounted for either way`)
  const unexpectedValues = readings.filter((r) => {
    const sent = sentValues.get(`${r.metric} ${r.ts}`)
    return sent !== undefined && !sent.has(r.value)
  })
  t.same(unexpectedValues, [], 'each stored value is one that was sent for that metric and time')
  // Readings the accepted messages held: exact unless a verdict changed in flight.
  const held = (v: DecodeVerdict): number => v.outcome === 'accepted' ? v.readings.length : 0
  const fewest = published.reduce((sum, m) => sum + Math.min(held(m.before), held(m.after)), 0)
  const most = published.reduce((sum, m) => sum + Math.max(held(m.before), held(m.after)), 0)
  t.ok(readings.length <= most, `no more readings are stored (${readings.length}) than the accepted messages held (${most})`)

  // The logs: one 'payload rejected' line per rejection, with a known reason.
  const rejectedLines = vigil.logs.find('payload rejected', firstLine).filter((line) => line.deviceId === device.deviceId)
  t.equal(rejectedLines.length, rejections.length, 'each rejection is logged exactly once')
  t.same(rejectedLines.filter((line) => typeof line.reason !== 'string' || !rejectionReasons.has(line.reason)), [], 'every rejection log line has a known reason')
  const lineReasons = new Map<string, number>()
  for (const line of rejectedLines) countInto(lineReasons, `rejected ${String(line.reason)}`)
  const loggedReasons = new Map<string, number>()
  for (const r of rejections) countInto(loggedReasons, `rejected ${r.reason}`)
  t.same(sortedEntries(lineReasons), sortedEntries(loggedReasons), 'log lines and the rejection log agree on the reasons')

  // The metrics move with them.
  const metricsAfter = await vigil.metrics()
  const delta = (series: string): number => (metricsAfter.get(series) ?? 0) - (metricsBefore.get(series) ?? 0)
  t.equal(delta('vigil_mqtt_messages_received_total{kind="telemetry"}') + delta('vigil_mqtt_messages_received_total{kind="senml"}'), published.length, 'every message reached ingest')
  const rejectionsBefore = counterByLabel(metricsBefore, 'vigil_rejections_total')
  let rejectionsCounted = 0
  for (const [reason, value] of counterByLabel(metricsAfter, 'vigil_rejections_total')) rejectionsCounted += value - (rejectionsBefore.get(reason) ?? 0)
  t.equal(rejectionsCounted, rejections.length, 'vigil_rejections_total counts each rejection once')
  const acceptedCounted = delta('vigil_readings_accepted_total')
  t.ok(acceptedCounted >= fewest && acceptedCounted <= most, `vigil_readings_accepted_total counts the accepted messages' readings (${acceptedCounted}; expected ${fewest === most ? fewest : `${fewest}–${most}`})`)
})

/** The promise's value, or `fallback` once `ms` have passed. */
async function within<T> (ms: number, promise: Promise<T>, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<T>((resolve) => { timer = setTimeout(() => resolve(fallback), ms) })
  try {
    return await Promise.race([promise, expired])
  } finally {
    clearTimeout(timer)
  }
}

/** The decoder's verdict at `nowMs`, plus the assignment check ingest makes after it. */
function verdictAt (message: Pick<Published, 'kind' | 'payload'>, nowMs: number, assignedFrom: number): DecodeVerdict {
  const verdict = judgeDecode(() => decoders[message.kind](message.payload, nowMs), nowMs)
  if (verdict.outcome === 'accepted' && verdict.readings.some((r) => r.ts < assignedFrom)) return { outcome: 'rejected', reason: 'device_unassigned' }
  return verdict
}

function sortedEntries (counts: Map<string, number>): Array<[string, number]> {
  return [...counts].sort(([a], [b]) => a.localeCompare(b))
}
