import t from 'tap'
import {
  bucketCount, decodeIdCursor, decodeReadingCursor, decodeSerialCursor, encodeReadingCursor,
  normalizeMac, pageOf, parseDateOrDateTime, parseEvery, suggestEvery
} from '../../api/schemas/common.ts'

t.test('normalizeMac accepts the usual spellings and refuses the rest', async (t) => {
  const accepted: Array<[string, string]> = [
    ['AA:BB:CC:DD:EE:FF', 'aa:bb:cc:dd:ee:ff'],
    ['aa:bb:cc:dd:ee:ff', 'aa:bb:cc:dd:ee:ff'],
    ['aa-bb-cc-dd-ee-ff', 'aa:bb:cc:dd:ee:ff'],
    ['AA-BB-CC-DD-EE-0F', 'aa:bb:cc:dd:ee:0f'],
    ['aabb.ccdd.eeff', 'aa:bb:cc:dd:ee:ff'],
    ['AABB.CCDD.EEFF', 'aa:bb:cc:dd:ee:ff'],
    ['aabbccddeeff', 'aa:bb:cc:dd:ee:ff'],
    ['001A2B3C4D5E', '00:1a:2b:3c:4d:5e'],
    [' aa:bb:cc:dd:ee:ff\n', 'aa:bb:cc:dd:ee:ff'],
    // EUI-64
    ['00:11:22:FF:FE:33:44:55', '00:11:22:ff:fe:33:44:55'],
    ['00-11-22-ff-fe-33-44-55', '00:11:22:ff:fe:33:44:55'],
    ['0011.22ff.fe33.4455', '00:11:22:ff:fe:33:44:55'],
    ['001122fffe334455', '00:11:22:ff:fe:33:44:55']
  ]
  for (const [input, expected] of accepted) t.equal(normalizeMac(input), expected, JSON.stringify(input))

  const refused = [
    '',
    'aa:bb:cc:dd:ee', // 5 octets
    'aa:bb:cc:dd:ee:ff:00', // 7 octets
    'aa:bb:cc:dd:ee:ff:00:11:22', // 9 octets
    'aa:bb-cc:dd-ee:ff', // mixed separators
    'aa:bb:cc:dd:ee:fg', // not hex
    'a:bb:cc:dd:ee:ff', // short octet
    'aaa:bb:cc:dd:ee:ff',
    'aabb.ccdd.eef', // short group
    'aabb.ccdd.eeff.00', // short EUI-64 group
    'aabbccddeef', // 11 digits
    'aabbccddeeff0', // 13 digits
    'aa.bb.cc.dd.ee.ff', // dots between octets
    'aa bb cc dd ee ff',
    'aa::bb:cc:dd:ee:ff',
    ':aa:bb:cc:dd:ee:ff',
    'aabb:ccdd:eeff',
    '0x001a2b3c4d5e'
  ]
  for (const input of refused) t.equal(normalizeMac(input), null, JSON.stringify(input))
})

t.test('parseDateOrDateTime: ISO dates and RFC 3339 date-times with an offset', async (t) => {
  t.equal(parseDateOrDateTime('2025-11-01'), Date.UTC(2025, 10, 1))
  t.equal(parseDateOrDateTime('2025-11-01T09:30:00Z'), Date.UTC(2025, 10, 1, 9, 30))
  t.equal(parseDateOrDateTime('2025-11-01T09:30Z'), Date.UTC(2025, 10, 1, 9, 30))
  t.equal(parseDateOrDateTime('2025-11-01T09:30:00.123+02:00'), Date.UTC(2025, 10, 1, 7, 30, 0, 123))
  t.equal(parseDateOrDateTime('2024-02-29'), Date.UTC(2024, 1, 29), 'leap day')
  for (const bad of ['2025-02-29', '2025-13-01', '2025-00-10', '2025-04-31', '2025-11-01T24:00:00Z',
    '2025-11-01T09:30:00', '2025-11-01T09:60:00Z', '01/11/2025', '2025-11-1', 'yesterday', '']) {
    t.equal(parseDateOrDateTime(bad), null, bad)
  }
})

t.test('parseEvery, bucketCount and suggestEvery', async (t) => {
  t.equal(parseEvery('1s'), 1000)
  t.equal(parseEvery('90s'), 90_000)
  t.equal(parseEvery('5m'), 300_000)
  t.equal(parseEvery('2h'), 7_200_000)
  t.equal(parseEvery('7d'), 604_800_000)
  for (const bad of ['0s', '1', 'm', '1.5m', '1w', '-1m', '01m', '1M', '1234567s']) t.equal(parseEvery(bad), null, bad)

  t.equal(bucketCount(0, 60_000, 60_000), 1)
  t.equal(bucketCount(0, 60_001, 60_000), 2)
  t.equal(bucketCount(30_000, 90_000, 60_000), 2, 'unaligned range touches two buckets')
  t.equal(bucketCount(59_999, 60_000, 60_000), 1)

  const week = 7 * 86_400_000
  const suggestion = suggestEvery(week, 10_000)
  t.equal(suggestion, '2m', 'a week at 1m is 10,081 buckets: next readable width')
  for (const range of [1000, 3_600_000, week, 365 * 86_400_000, 10 * 365 * 86_400_000]) {
    const every = parseEvery(suggestEvery(range, 10_000))!
    // Worst case alignment: the range starts 1 ms before a bucket boundary.
    t.ok(bucketCount(every - 1, every - 1 + range, every) <= 10_000, `suggestion for ${range} ms fits`)
  }
})

t.test('reading cursors round-trip; anything else is VIGIL_ERR_BAD_CURSOR', async (t) => {
  const position = { ts: 1764150000000, deviceId: '0b0e4f5c-6a4a-4b67-9d1e-6b8f6f0f2a11', metric: 'heart_rate' }
  const cursor = encodeReadingCursor(position)
  t.match(cursor, /^[A-Za-z0-9_-]+$/, 'base64url')
  t.same(decodeReadingCursor(cursor), position)

  const enc = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const bad = [
    '', 'not base64!', 'x'.repeat(513), Buffer.from('{not json').toString('base64url'),
    enc({ ts: 1, deviceId: position.deviceId, metric: 'spo2' }),
    enc([1.5, position.deviceId, 'spo2']),
    enc(['1', position.deviceId, 'spo2']),
    enc([1, 'not-a-uuid', 'spo2']),
    enc([1, position.deviceId, 'Robert\'); DROP TABLE']),
    enc([1, position.deviceId]),
    enc(null)
  ]
  for (const c of bad) t.throws(() => decodeReadingCursor(c), { code: 'VIGIL_ERR_BAD_CURSOR' }, c.slice(0, 40))
})

t.test('id and serial cursors', async (t) => {
  t.equal(decodeIdCursor(undefined), undefined)
  t.equal(decodeIdCursor('0B0E4F5C-6A4A-4B67-9D1E-6B8F6F0F2A11'), '0b0e4f5c-6a4a-4b67-9d1e-6b8f6f0f2a11')
  t.throws(() => decodeIdCursor('nope'), { code: 'VIGIL_ERR_BAD_CURSOR' })
  t.equal(decodeSerialCursor('42'), '42')
  for (const c of ['0', '-1', '1e3', '9'.repeat(19), 'abc']) t.throws(() => decodeSerialCursor(c), { code: 'VIGIL_ERR_BAD_CURSOR' }, c)
})

t.test('pageOf uses the extra row only to decide nextCursor', async (t) => {
  t.same(pageOf([1, 2, 3], 2, String), { items: [1, 2], nextCursor: '2' })
  t.same(pageOf([1, 2], 2, String), { items: [1, 2], nextCursor: null })
  t.same(pageOf([], 2, String), { items: [], nextCursor: null })
})
