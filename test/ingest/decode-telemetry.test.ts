import t from 'tap'
import { PayloadRejection } from '../../readings/reading.ts'
import { decodeTelemetry } from '../../ingest/decode-telemetry.ts'

const now = Date.UTC(2025, 10, 26, 9, 40)
const minute = 60_000

function json (document: unknown): Buffer {
  return Buffer.from(JSON.stringify(document))
}

function reading (fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { metric: 'heart_rate', value: 72, unit: '/min', ts: now - minute, ...fields }
}

function reasonOf (run: () => unknown): string {
  try {
    run()
  } catch (error) {
    if (error instanceof PayloadRejection) return error.reason
    throw error
  }
  return 'accepted'
}

t.test('valid payloads', async (t) => {
  t.same(decodeTelemetry(json({ seq: 42, readings: [reading()] }), now), {
    seq: 42,
    readings: [{ metric: 'heart_rate', value: 72, unit: '/min', ts: now - minute }]
  }, 'DESIGN.md example shape')

  t.same(decodeTelemetry(json({
    readings: [
      reading({ metric: 'body_temp', value: 98.6, unit: '[degF]' }),
      reading({ metric: 'body_weight', value: 180, unit: 'lb', ts: now - 2 * minute }),
      reading({ metric: 'glucose', value: 5.5, unit: 'mmol/L' }),
      reading({ metric: 'spo2', value: 97, unit: '%' })
    ]
  }), now), {
    seq: null,
    readings: [
      { metric: 'body_temp', value: 37, unit: 'Cel', ts: now - minute },
      { metric: 'body_weight', value: 81.647, unit: 'kg', ts: now - 2 * minute },
      { metric: 'glucose', value: 99.1, unit: 'mg/dL', ts: now - minute },
      { metric: 'spo2', value: 97, unit: '%', ts: now - minute }
    ]
  }, 'converted to canonical units, no seq')

  t.equal(decodeTelemetry(json({ seq: 0, readings: [reading()] }), now).seq, 0, 'seq 0 kept')
  t.equal(decodeTelemetry(json({ readings: [reading({ ts: now + 5 * minute })] }), now).readings[0]?.ts,
    now + 5 * minute, 'clock 5 minutes ahead accepted')
  t.equal(decodeTelemetry(json({ readings: [reading({ ts: Date.UTC(2000, 0, 1) })] }), now).readings[0]?.ts,
    Date.UTC(2000, 0, 1), '2000-01-01 accepted')
  t.equal(decodeTelemetry(json({ readings: Array.from({ length: 500 }, () => reading()) }), now).readings.length,
    500, '500 readings accepted')
  t.equal(decodeTelemetry(Buffer.from(`\uFEFF${JSON.stringify({ readings: [reading()] })}`), now).readings.length,
    1, 'UTF-8 byte order mark tolerated (RFC 8259 §8.1)')
})

t.test('rejections', async (t) => {
  const cases: Array<[name: string, payload: Buffer, reason: string]> = [
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'payload_not_json'],
    ['empty payload', Buffer.alloc(0), 'payload_not_json'],
    ['not JSON', Buffer.from('heart_rate=72'), 'payload_not_json'],
    ['truncated JSON', Buffer.from('{"readings": [{"metric": "heart_rate"'), 'payload_not_json'],
    ['JSON null', json(null), 'payload_schema'],
    ['JSON array', json([reading()]), 'payload_schema'],
    ['JSON number', json(42), 'payload_schema'],
    ['no readings', json({ seq: 1 }), 'payload_schema'],
    ['empty readings', json({ readings: [] }), 'payload_schema'],
    ['501 readings', json({ readings: Array.from({ length: 501 }, () => reading()) }), 'payload_schema'],
    ['readings not an array', json({ readings: reading() }), 'payload_schema'],
    ['negative seq', json({ seq: -1, readings: [reading()] }), 'payload_schema'],
    ['fractional seq', json({ seq: 1.5, readings: [reading()] }), 'payload_schema'],
    ['string seq', json({ seq: '42', readings: [reading()] }), 'payload_schema'],
    ['unsafe seq', Buffer.from(`{"seq": 9007199254740993, "readings": ${JSON.stringify([reading()])}}`), 'payload_schema'],
    ['extra top-level field', json({ readings: [reading()], device: 'x' }), 'payload_schema'],
    ['__proto__ top-level key', Buffer.from(`{"__proto__": {"polluted": true}, "readings": ${JSON.stringify([reading()])}}`), 'payload_schema'],
    ['extra reading field', json({ readings: [reading({ note: 'x' })] }), 'payload_schema'],
    ['missing unit', json({ readings: [{ metric: 'heart_rate', value: 72, ts: now }] }), 'payload_schema'],
    ['missing metric', json({ readings: [{ value: 72, unit: '/min', ts: now }] }), 'payload_schema'],
    ['missing value', json({ readings: [{ metric: 'heart_rate', unit: '/min', ts: now }] }), 'payload_schema'],
    ['missing ts', json({ readings: [{ metric: 'heart_rate', value: 72, unit: '/min' }] }), 'payload_schema'],
    ['empty metric', json({ readings: [reading({ metric: '' })] }), 'payload_schema'],
    ['65-character metric', json({ readings: [reading({ metric: 'h'.repeat(65) })] }), 'payload_schema'],
    ['empty unit', json({ readings: [reading({ unit: '' })] }), 'payload_schema'],
    ['33-character unit', json({ readings: [reading({ unit: '/'.repeat(33) })] }), 'payload_schema'],
    ['string value', json({ readings: [reading({ value: '72' })] }), 'payload_schema'],
    ['null value', json({ readings: [reading({ value: null })] }), 'payload_schema'],
    ['value overflowing to Infinity', Buffer.from(`{"readings": [{"metric": "heart_rate", "value": 1e400, "unit": "/min", "ts": ${now}}]}`), 'payload_schema'],
    ['fractional ts', json({ readings: [reading({ ts: now + 0.5 })] }), 'payload_schema'],
    ['ISO string ts', json({ readings: [reading({ ts: new Date(now).toISOString() })] }), 'payload_schema'],
    ['unknown metric', json({ readings: [reading({ metric: 'pulse' })] }), 'unknown_metric'],
    ['__proto__ metric', json({ readings: [reading({ metric: '__proto__' })] }), 'unknown_metric'],
    ['constructor metric', json({ readings: [reading({ metric: 'constructor' })] }), 'unknown_metric'],
    ['unsupported unit', json({ readings: [reading({ unit: 'Hz' })] }), 'unit_unsupported'],
    ['value too high', json({ readings: [reading({ value: 301 })] }), 'value_out_of_range'],
    ['value too low after conversion', json({ readings: [reading({ metric: 'body_temp', value: 50, unit: '[degF]' })] }), 'value_out_of_range'],
    ['ts 5 minutes and 1 ms ahead', json({ readings: [reading({ ts: now + 5 * minute + 1 })] }), 'timestamp_in_future'],
    ['ts in seconds, not ms', json({ readings: [reading({ ts: Math.floor(now / 1000) })] }), 'timestamp_invalid'],
    ['ts just before 2000', json({ readings: [reading({ ts: Date.UTC(2000, 0, 1) - 1 })] }), 'timestamp_invalid'],
    ['ts zero', json({ readings: [reading({ ts: 0 })] }), 'timestamp_invalid'],
    ['negative ts', json({ readings: [reading({ ts: -1 })] }), 'timestamp_invalid'],
    ['ts beyond safe integers', json({ readings: [reading({ ts: 2 ** 60 })] }), 'timestamp_invalid']
  ]
  for (const [name, payload, reason] of cases) {
    t.equal(reasonOf(() => decodeTelemetry(payload, now)), reason, name)
  }
})

t.test('one bad reading rejects the whole message', async (t) => {
  const payload = json({ seq: 7, readings: [reading(), reading({ metric: 'pulse' }), reading()] })
  t.equal(reasonOf(() => decodeTelemetry(payload, now)), 'unknown_metric')
})

t.test('schema rejection names the JSON path of the first problem', async (t) => {
  // The path is part of the contract (device integrators need it), unlike the wording.
  const error = t.throws(() => decodeTelemetry(json({ readings: [reading(), { metric: 'heart_rate', value: 72, ts: now }] }), now))
  t.ok(error instanceof PayloadRejection)
  t.match((error as Error).message, '/readings/1/unit')
})

t.test('__proto__ in a payload pollutes nothing', async (t) => {
  const payload = Buffer.from(`{"readings": [{"__proto__": {"polluted": true}, "metric": "heart_rate", "value": 72, "unit": "/min", "ts": ${now}}]}`)
  t.equal(reasonOf(() => decodeTelemetry(payload, now)), 'payload_schema')
  t.equal(({} as Record<string, unknown>).polluted, undefined)
})
