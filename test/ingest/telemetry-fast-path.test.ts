import { isDeepStrictEqual } from 'node:util'
import t from 'tap'
import type { Test } from 'tap'
import { decodeTelemetry, decodeTelemetryBySchema, MAX_ITEMS } from '../../ingest/decode-telemetry.ts'
import { parseCommonTelemetry } from '../../ingest/telemetry-fast-path.ts'
import { PayloadRejection } from '../../readings/reading.ts'
import { vitalsCatalogue } from '../../readings/vitals-catalogue.ts'

// The fast path may only be faster: for every payload, decodeTelemetry (fast path, then the
// schema path) must give exactly what the schema path alone gives (the same readings, or the
// same rejection with the same message), and whenever the fast path answers, its document must
// be JSON.parse's. Payloads are enumerated (number and string forms, key orders, whitespace,
// lengths at each limit) and mutated byte by byte from a seeded generator.

const now = Date.UTC(2026, 11, 6, 2, 0)

type Outcome = { accepted: unknown } | { reason: string, message: string }

function outcome (decode: () => unknown): Outcome {
  try {
    return { accepted: decode() }
  } catch (err) {
    if (err instanceof PayloadRejection) return { reason: err.reason, message: err.message }
    throw err
  }
}

function jsonParse (payload: Buffer): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload))
  } catch {
    return undefined
  }
}

let fastAnswers = 0
let compared = 0
function check (t: Test, payload: Buffer, label: string): void {
  compared++
  const reference = outcome(() => decodeTelemetryBySchema(payload, now))
  const got = outcome(() => decodeTelemetry(payload, now))
  if (!isDeepStrictEqual(got, reference)) {
    t.fail(`${label}: decodeTelemetry differs from the schema path`, { payload: payload.toString('latin1'), got, reference })
    return
  }
  const fast = parseCommonTelemetry(payload, MAX_ITEMS)
  if (fast === null) return
  fastAnswers++
  if (!isDeepStrictEqual(fast, jsonParse(payload))) {
    t.fail(`${label}: fast path document is not JSON.parse's`, { payload: payload.toString('latin1'), fast })
  }
  if ('reason' in reference && (reference.reason === 'payload_schema' || reference.reason === 'payload_not_json')) {
    t.fail(`${label}: fast path answered a payload the schema path refuses (${reference.reason})`, { payload: payload.toString('latin1') })
  }
}

const numbers = [
  '0', '-0', '1', '-1', '01', '-01', '1.', '.5', '1.0', '1.50', '-0.0', '36.6', '98.6', '72', '0.1', '0.30000000000000004',
  '1e2', '1E2', '1e-2', '1e+2', '-', '--1', '+1', '123456789012345', '1234567890123456', '12345678901234.5', '0.000000000000001',
  '0.0000000000000001', '9007199254740991', '9007199254740993', '1.7976931348623157e308', '1e400', 'NaN', 'Infinity', '-Infinity',
  'true', 'null', '"72"', '[]', '{}', String(now), String(now - 60_000), String(now + 10 * 60_000), '946684800000', '946684799999',
  String(now - 60_000) + '.0', '0x10', '1_000', '١'
]
const strings = [
  '""', '"heart_rate"', '"spo2"', '"/min"', '"%"', '"Cel"', '"[degF]"', '"mm[Hg]"', '"kg"', '"lb"', '"mmol/L"', '"bogus"',
  `"${'a'.repeat(32)}"`, `"${'a'.repeat(33)}"`, `"${'a'.repeat(64)}"`, `"${'a'.repeat(65)}"`, '"heart\\u005frate"', '"heart\\_rate"',
  '"\\/min"', '"°C"', '"\t"', '"a\\"b"', '"unterminated', 'heart_rate', '72', 'null', '"\u00e9"'
]
const metricUnits = Object.entries(vitalsCatalogue).flatMap(([metric, def]) => Object.keys(def.units).map((unit) => ({ metric, unit })))

function readingJson (fields: Record<string, string>, order = ['metric', 'value', 'unit', 'ts'], gap = ''): string {
  return `{${order.filter((k) => k in fields).map((k) => `${gap}"${k}"${gap}:${gap}${fields[k]}${gap}`).join(',')}}`
}
const base = { metric: '"heart_rate"', value: '72', unit: '"/min"', ts: String(now - 60_000) }

function permutations<T> (items: T[]): T[][] {
  if (items.length <= 1) return [items]
  return items.flatMap((item, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest]))
}

function enumerated (): Array<[string, string]> {
  const out: Array<[string, string]> = []
  const wrap = (readings: string[], seq = '7', gap = ''): string => `{${gap}"seq"${gap}:${gap}${seq},${gap}"readings"${gap}:${gap}[${readings.join(`${gap},${gap}`)}]${gap}}`
  for (const n of numbers) {
    out.push([`value ${n}`, wrap([readingJson({ ...base, value: n })])])
    out.push([`ts ${n}`, wrap([readingJson({ ...base, ts: n })])])
    out.push([`seq ${n}`, wrap([readingJson(base)], n)])
  }
  for (const s of strings) {
    out.push([`metric ${s}`, wrap([readingJson({ ...base, metric: s })])])
    out.push([`unit ${s}`, wrap([readingJson({ ...base, unit: s })])])
  }
  for (const { metric, unit } of metricUnits) {
    for (const value of ['0', '1', '37', '97.5', '120', '5.5', '-3', '100000']) {
      out.push([`${metric} ${unit} ${value}`, wrap([readingJson({ ...base, metric: JSON.stringify(metric), unit: JSON.stringify(unit), value })])])
    }
  }
  for (const order of permutations(['metric', 'value', 'unit', 'ts'])) out.push([`order ${order.join(',')}`, wrap([readingJson(base, order)])])
  for (const key of ['metric', 'value', 'unit', 'ts']) {
    const { [key as keyof typeof base]: _, ...rest } = base
    out.push([`without ${key}`, wrap([readingJson(rest)])])
  }
  out.push(['extra key', wrap([readingJson({ ...base, extra: '1' }, ['metric', 'value', 'unit', 'ts', 'extra'])])])
  out.push(['duplicate key', wrap([`{"metric":"heart_rate","value":72,"value":73,"unit":"/min","ts":${now - 60_000}}`])])
  out.push(['duplicate seq', `{"seq":1,"seq":2,"readings":[${readingJson(base)}]}`])
  out.push(['no seq', `{"readings":[${readingJson(base)}]}`])
  out.push(['seq last', `{"readings":[${readingJson(base)}],"seq":3}`])
  out.push(['no readings', '{"seq":3}'])
  out.push(['empty readings', wrap([])])
  out.push(['empty object', '{}'])
  out.push(['array', `[${readingJson(base)}]`])
  out.push(['readings not array', `{"readings":${readingJson(base)}}`])
  for (const gap of [' ', '\n', '\t', '\r\n ', '\u00a0', '\f']) {
    out.push([`whitespace ${JSON.stringify(gap)}`, wrap([readingJson(base, undefined, gap)], '7', gap)])
    out.push([`outer whitespace ${JSON.stringify(gap)}`, `${gap}${wrap([readingJson(base)])}${gap}`])
  }
  out.push(['BOM', `\ufeff${wrap([readingJson(base)])}`])
  out.push(['trailing comma', `{"seq":1,"readings":[${readingJson(base)},]}`])
  out.push(['trailing garbage', `${wrap([readingJson(base)])}x`])
  out.push(['two documents', `${wrap([readingJson(base)])}{}`])
  for (const count of [1, 6, 50, MAX_ITEMS - 1, MAX_ITEMS, MAX_ITEMS + 1]) {
    out.push([`${count} readings`, wrap(Array.from({ length: count }, (_, i) => readingJson({ ...base, ts: String(now - i * 1000) })))])
  }
  return out
}

t.test('enumerated payloads: the same outcome with and without the fast path', async (t) => {
  for (const [label, text] of enumerated()) check(t, Buffer.from(text, label === 'BOM' ? 'utf8' : 'latin1'), label)
  t.pass(`${compared} payloads compared`)
})

t.test('the fast path answers the shapes devices send', async (t) => {
  const shapes = [
    // The bench's load generator and the simulator (JSON.stringify of { seq, readings }).
    `{"seq":41,"readings":[{"metric":"heart_rate","value":72,"unit":"/min","ts":${now - 1000}}]}`,
    JSON.stringify({
      seq: 9,
      readings: [
        { metric: 'heart_rate', value: 88, unit: '/min', ts: now }, { metric: 'resp_rate', value: 18, unit: '/min', ts: now },
        { metric: 'spo2', value: 95, unit: '%', ts: now }, { metric: 'body_temp', value: 37.4, unit: 'Cel', ts: now },
        { metric: 'bp_systolic', value: 118, unit: 'mm[Hg]', ts: now }, { metric: 'bp_diastolic', value: 76, unit: 'mm[Hg]', ts: now }
      ]
    }),
    JSON.stringify({ readings: Array.from({ length: 50 }, (_, i) => ({ metric: 'spo2', value: 96.5, unit: '%', ts: now - i * 60_000 })) }),
    JSON.stringify({ seq: 1, readings: [{ metric: 'body_temp', value: 98.6, unit: '[degF]', ts: now }] }, null, 2)
  ]
  for (const text of shapes) {
    const payload = Buffer.from(text)
    t.ok(parseCommonTelemetry(payload, MAX_ITEMS) !== null, `fast path answers ${text.slice(0, 60)}…`)
    t.same(decodeTelemetry(payload, now), decodeTelemetryBySchema(payload, now))
  }
})

t.test('mutated payloads (seeded): the same outcome with and without the fast path', async (t) => {
  let seed = 0x5eed18
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return seed / 0x80000000
  }
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!
  const alphabet = Buffer.from('{}[]:,"\\ .-+eE0123456789abcxyzu\t\n\r/%_', 'latin1')
  const seeds = enumerated().filter(([label]) => !label.startsWith('5')).map(([, text]) => Buffer.from(text, 'latin1'))
  const before = fastAnswers
  for (let n = 0; n < 20_000; n++) {
    const bytes = [...pick(seeds)]
    const edits = 1 + Math.floor(random() * 3)
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * (bytes.length + 1))
      const kind = random()
      const byte = random() < 0.9 ? pick([...alphabet]) : Math.floor(random() * 256)
      if (kind < 0.35) bytes.splice(at, 1)
      else if (kind < 0.7) bytes.splice(at, 0, byte)
      else bytes[Math.min(at, bytes.length - 1)] = byte
    }
    check(t, Buffer.from(bytes), `mutation ${n}`)
  }
  t.ok(fastAnswers > before, `the fast path answered ${fastAnswers - before} of the mutated payloads (the rest went to the schema path)`)
})
