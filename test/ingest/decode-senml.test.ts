import t from 'tap'
import { PayloadRejection } from '../../readings/reading.ts'
import { decodeSenml } from '../../ingest/decode-senml.ts'

const now = Date.UTC(2025, 10, 26, 9, 40)
const nowSeconds = now / 1000

function pack (...records: Array<Record<string, unknown>>): Buffer {
  return Buffer.from(JSON.stringify(records))
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

t.test('RFC 8428 §5.1.2-style pack: bn, bt, bu and relative t', async (t) => {
  const decoded = decodeSenml(pack(
    { bn: 'urn:dev:ow:10e2073a0108006:', bt: 1.764150000001e9, bu: '/min', bver: 10, n: 'heart_rate', v: 72 },
    { n: 'heart_rate', t: -5, v: 71 },
    { n: 'heart_rate', t: -4, v: 70.5 },
    { n: 'resp_rate', t: -3, v: 14 },
    { n: 'spo2', u: '%', t: -2, v: 97 }
  ), Date.UTC(2025, 10, 26, 9, 45))
  t.same(decoded, {
    seq: null,
    readings: [
      { metric: 'heart_rate', value: 72, unit: '/min', ts: 1764150000001 },
      { metric: 'heart_rate', value: 71, unit: '/min', ts: 1764149995001 },
      { metric: 'heart_rate', value: 70.5, unit: '/min', ts: 1764149996001 },
      { metric: 'resp_rate', value: 14, unit: '/min', ts: 1764149997001 },
      { metric: 'spo2', value: 97, unit: '%', ts: 1764149998001 }
    ]
  })
})

t.test('base fields carry forward until replaced', async (t) => {
  const decoded = decodeSenml(pack(
    { bn: 'cuff-7/', bt: nowSeconds - 60, bu: 'mmHg', bv: 100, n: 'bp_systolic', v: 20 },
    { n: 'bp_diastolic', v: -20 },
    { bn: 'thermometer-2/', bv: 0, n: 'body_temp', u: '[degF]', v: 98.6 },
    { bu: 'lb', n: 'body_weight', t: 30, v: 180 }
  ), now)
  t.same(decoded.readings, [
    { metric: 'bp_systolic', value: 120, unit: 'mm[Hg]', ts: now - 60_000 },
    { metric: 'bp_diastolic', value: 80, unit: 'mm[Hg]', ts: now - 60_000 },
    { metric: 'body_temp', value: 37, unit: 'Cel', ts: now - 60_000 },
    { metric: 'body_weight', value: 81.647, unit: 'kg', ts: now - 30_000 }
  ])
})

t.test('name resolution', async (t) => {
  const cases: Array<[bn: string | undefined, n: string | undefined, metric: string]> = [
    [undefined, 'heart_rate', 'heart_rate'],
    [undefined, '8867-4', 'heart_rate'],
    ['urn:dev:mac:0024befffe804ff1:', 'heart_rate', 'heart_rate'],
    ['urn:dev:mac:0024befffe804ff1:', '8867-4', 'heart_rate'],
    ['device-42/', 'heart_rate', 'heart_rate'],
    ['device-42/', '8867-4', 'heart_rate'],
    ['urn:dev:mac:0024befffe804ff1:heart_rate', undefined, 'heart_rate'],
    ['ward-3/bed-2:', 'heart_rate', 'heart_rate']
  ]
  for (const [bn, n, metric] of cases) {
    const record: Record<string, unknown> = { u: '/min', v: 72 }
    if (bn !== undefined) record.bn = bn
    if (n !== undefined) record.n = n
    t.equal(decodeSenml(pack(record), now).readings[0]?.metric, metric, `${bn ?? ''} + ${n ?? ''}`)
  }
  t.equal(decodeSenml(pack({ bn: 'oximeter-1/', n: '59408-5', u: '%', v: 96 }), now).readings[0]?.metric,
    'spo2', 'SpO2 by pulse oximetry LOINC')
})

t.test('time resolution (RFC 8428 §4.5.3)', async (t) => {
  const cases: Array<[name: string, fields: Record<string, unknown>, ts: number]> = [
    ['no time means now', {}, now],
    ['negative t is seconds before now', { t: -60 }, now - 60_000],
    ['relative bt plus t', { bt: -120, t: 10 }, now - 110_000],
    ['fractional seconds round to ms', { t: -1.0004 }, now - 1000],
    ['absolute t', { t: nowSeconds - 3600 }, now - 3_600_000],
    ['absolute bt plus negative t', { bt: nowSeconds, t: -5 }, now - 5000],
    ['small positive relative t', { t: 60 }, now + 60_000]
  ]
  for (const [name, fields, ts] of cases) {
    t.equal(decodeSenml(pack({ n: 'heart_rate', u: '/min', v: 72, ...fields }), now).readings[0]?.ts, ts, name)
  }
})

t.test('seq comes from the first record only', async (t) => {
  t.equal(decodeSenml(pack({ n: 'heart_rate', u: '/min', v: 72, seq: 9 }), now).seq, 9)
  t.equal(decodeSenml(pack({ n: 'heart_rate', u: '/min', v: 72, seq: 0 }), now).seq, 0)
  t.equal(decodeSenml(pack({ n: 'heart_rate', u: '/min', v: 72 }, { n: 'heart_rate', u: '/min', v: 71, seq: 9 }), now).seq, null)
})

t.test('unrecognised fields without a trailing _ are ignored (RFC 8428 §4.4)', async (t) => {
  t.equal(decodeSenml(pack({ n: 'heart_rate', u: '/min', v: 72, ut: 60, s: 1, bs: 0, battery: 80 }), now).readings[0]?.value, 72)
})

t.test('rejections', async (t) => {
  const hr = { n: 'heart_rate', u: '/min', v: 72 }
  const cases: Array<[name: string, payload: Buffer, reason: string]> = [
    ['invalid UTF-8', Buffer.from([0x5b, 0xc3, 0x28, 0x5d]), 'payload_not_json'],
    ['not JSON', Buffer.from('heart_rate,72'), 'payload_not_json'],
    ['object, not a pack', Buffer.from(JSON.stringify(hr)), 'senml_invalid'],
    ['empty pack', pack(), 'senml_invalid'],
    ['501 records', pack(...Array.from({ length: 501 }, () => hr)), 'senml_invalid'],
    ['record not an object', Buffer.from('[72]'), 'senml_invalid'],
    ['null record', Buffer.from('[null]'), 'senml_invalid'],
    ['nested array record', Buffer.from(JSON.stringify([[hr]])), 'senml_invalid'],
    ['string v', pack({ ...hr, v: '72' }), 'senml_invalid'],
    ['numeric bn', pack({ ...hr, bn: 42 }), 'senml_invalid'],
    ['string t', pack({ ...hr, t: '-5' }), 'senml_invalid'],
    ['v overflowing to Infinity', Buffer.from('[{"n": "heart_rate", "u": "/min", "v": 1e400}]'), 'senml_invalid'],
    ['bver newer than 10', pack({ ...hr, bver: 11 }), 'senml_invalid'],
    ['bver zero', pack({ ...hr, bver: 0 }), 'senml_invalid'],
    ['fractional bver', pack({ ...hr, bver: 10.5 }), 'senml_invalid'],
    ['bver changes within a pack', pack({ ...hr, bver: 10 }, { ...hr, bver: 5 }), 'senml_invalid'],
    ['must-understand field', pack({ ...hr, vendor_: 1 }), 'senml_invalid'],
    ['__proto__ field (ends with _)', Buffer.from('[{"n": "heart_rate", "u": "/min", "v": 72, "__proto__": {"x": 1}}]'), 'senml_invalid'],
    ['string value', pack({ n: 'heart_rate', u: '/min', vs: '72' }), 'senml_invalid'],
    ['boolean value', pack({ n: 'heart_rate', vb: true }), 'senml_invalid'],
    ['data value', pack({ n: 'heart_rate', vd: 'aGkgCg' }), 'senml_invalid'],
    ['v and vs together', pack({ ...hr, vs: '72' }), 'senml_invalid'],
    ['sum only', pack({ n: 'heart_rate', u: '/min', s: 72 }), 'senml_invalid'],
    ['no value', pack({ n: 'heart_rate', u: '/min' }), 'senml_invalid'],
    ['base value but no value field', pack({ n: 'heart_rate', u: '/min', bv: 72 }), 'senml_invalid'],
    ['no name', pack({ u: '/min', v: 72 }), 'senml_invalid'],
    ['name with a space', pack({ ...hr, n: 'heart rate' }), 'senml_invalid'],
    ['name starting with -', pack({ ...hr, bn: '-dev/' }), 'senml_invalid'],
    ['unknown metric', pack({ ...hr, n: 'pulse' }), 'unknown_metric'],
    ['unknown metric after prefix', pack({ ...hr, bn: 'urn:dev:mac:0024befffe804ff1:', n: 'pulse' }), 'unknown_metric'],
    ['bn only, no metric segment', pack({ bn: 'urn:dev:mac:0024befffe804ff1:', u: '/min', v: 72 }), 'unknown_metric'],
    ['__proto__ segment', pack({ ...hr, bn: 'dev/', n: '__proto__' }), 'unknown_metric'],
    ['constructor segment', pack({ ...hr, bn: 'dev:', n: 'constructor' }), 'unknown_metric'],
    ['no unit', pack({ n: 'heart_rate', v: 72 }), 'unit_unsupported'],
    ['wrong unit', pack({ ...hr, u: 'Cel' }), 'unit_unsupported'],
    ['wrong base unit', pack({ n: 'heart_rate', bu: 'Hz', v: 72 }), 'unit_unsupported'],
    ['bv + v out of range', pack({ ...hr, bv: 250, v: 72 }), 'value_out_of_range'],
    ['value out of range', pack({ ...hr, v: 0 }), 'value_out_of_range'],
    ['relative t 10 minutes ahead', pack({ ...hr, t: 600 }), 'timestamp_in_future'],
    ['absolute t 10 minutes ahead', pack({ ...hr, t: nowSeconds + 600 }), 'timestamp_in_future'],
    ['2^28 - 1 s is relative, years ahead', pack({ ...hr, t: 2 ** 28 - 1 }), 'timestamp_in_future'],
    ['2^28 s is absolute, in 1978', pack({ ...hr, t: 2 ** 28 }), 'timestamp_invalid'],
    ['absolute time before 2000', pack({ ...hr, bt: 946684799 }), 'timestamp_invalid'],
    ['time overflowing', pack({ ...hr, bt: 1e300, t: 1e300 }), 'timestamp_invalid']
  ]
  for (const [name, payload, reason] of cases) {
    t.equal(reasonOf(() => decodeSenml(payload, now)), reason, name)
  }
})

t.test('one bad record rejects the whole pack', async (t) => {
  const payload = pack(
    { bn: 'dev/', n: 'heart_rate', u: '/min', v: 72 },
    { n: 'spo2', u: '%', v: 130 },
    { n: 'heart_rate', u: '/min', v: 70 }
  )
  t.equal(reasonOf(() => decodeSenml(payload, now)), 'value_out_of_range')
})
