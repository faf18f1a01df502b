import zlib from 'node:zlib'
import t from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { appendedAtOfPrefix, crc32, crc32Fallback, declaredRecordLength, decodeRecordBody, encodeRecord, recordHeaderBytes, recordPrefixBytes, scanRecord } from '../../readings/spool-record.ts'

// The spool's record codec alone (readings/spool-record.ts): what a segment's bytes decode to.

const patientId = '11111111-1111-4111-8111-111111111111'
const deviceId = '22222222-2222-4222-8222-222222222222'

function readings (count: number, start = Date.UTC(2025, 10, 26)): StoredReading[] {
  return Array.from({ length: count }, (_, i) => ({ patientId, deviceId, metric: 'heart_rate', value: 60 + i + 0.25, unit: '/min', ts: start + i, seq: i }))
}

function scanned (buf: Buffer, offset: number): Extract<ReturnType<typeof scanRecord>, { kind: 'record' }> {
  const scan = scanRecord(buf, offset)
  if (scan.kind !== 'record') throw new Error(`expected a record at ${offset}, got ${scan.kind}`)
  return scan
}

t.test('round trip: what is encoded decodes to the same readings, count and appendedAt', async (t) => {
  const cases: Array<[string, StoredReading[]]> = [
    ['one reading', readings(1)],
    ['many readings', readings(500)],
    ['null seq, fractional and negative values, non-ASCII unit', [
      { patientId, deviceId, metric: 'body_temperature', value: 36.65, unit: 'Cel', ts: 1, seq: null },
      { patientId, deviceId, metric: 'x', value: -1e-7, unit: '°C µg/m³', ts: Number.MAX_SAFE_INTEGER, seq: 4294967295 }
    ]],
    ['an empty batch', []]
  ]
  for (const [name, batch] of cases) {
    const record = encodeRecord(batch, 1234.5)
    const scan = scanned(record, 0)
    t.equal(scan.length, record.length, `${name}: length`)
    t.equal(scan.count, batch.length, `${name}: count`)
    t.equal(scan.appendedAt, 1234.5, `${name}: appendedAt`)
    t.strictSame(decodeRecordBody(scan.body), batch, `${name}: readings`)
    t.equal(declaredRecordLength(record), record.length, `${name}: declared length`)
    t.equal(appendedAtOfPrefix(record.subarray(0, recordPrefixBytes)), 1234.5, `${name}: appendedAt from the prefix`)
  }
  t.equal(appendedAtOfPrefix(encodeRecord(readings(1), 1).subarray(0, recordPrefixBytes - 1)), null, 'a short prefix has no appendedAt')
})

t.test('records back to back are read one after another from their offsets', async (t) => {
  const batches = [readings(1, 100), readings(3, 200), readings(2, 300)]
  const buf = Buffer.concat(batches.map((b, i) => encodeRecord(b, i)))
  let offset = 0
  for (const [i, batch] of batches.entries()) {
    const scan = scanned(buf, offset)
    t.equal(scan.appendedAt, i)
    t.strictSame(decodeRecordBody(scan.body), batch)
    offset += scan.length
  }
  t.equal(offset, buf.length)
  t.equal(scanRecord(buf, offset).kind, 'incomplete', 'the end of the buffer is not a record')
})

t.test('a torn record: every cut short of its end is incomplete, and the record before it still reads', async (t) => {
  const first = encodeRecord(readings(2, 100), 1)
  const second = encodeRecord(readings(3, 200), 2)
  const wrong: string[] = []
  for (let cut = 0; cut < second.length; cut++) {
    const buf = Buffer.concat([first, second.subarray(0, cut)])
    if (decodeRecordBody(scanned(buf, 0).body).length !== 2) wrong.push(`cut ${cut}: the first record`)
    const kind = scanRecord(buf, first.length).kind
    if (kind !== 'incomplete') wrong.push(`cut ${cut}: ${kind}`)
  }
  t.strictSame(wrong, [], `all ${second.length} cuts`)
})

t.test('corruption: no single flipped bit reads as a record', async (t) => {
  const record = encodeRecord(readings(2), 42)
  const wrong: string[] = []
  for (let i = 0; i < record.length; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(record)
      bad[i] = bad[i]! ^ (1 << bit)
      const scan = scanRecord(bad, 0)
      // A flipped length can only look longer (a torn tail) or fail; anything after it fails the checksum.
      const expected = i < 4 ? ['corrupt', 'incomplete'] : ['corrupt']
      if (!expected.includes(scan.kind) || (i >= 4 && scan.kind === 'corrupt' && scan.reason !== 'checksum mismatch')) {
        wrong.push(`byte ${i} bit ${bit}: ${JSON.stringify(scan.kind === 'record' ? { kind: scan.kind } : scan)}`)
      }
    }
  }
  t.strictSame(wrong, [], `${record.length * 8} flips`)
})

t.test('corruption: bad lengths and an unknown version', async (t) => {
  const tooShort = Buffer.alloc(64)
  tooShort.writeUInt32LE(12, 0)
  t.strictSame(scanRecord(tooShort, 0), { kind: 'corrupt', reason: 'bad length' }, 'shorter than the fixed body')
  t.strictSame(scanRecord(Buffer.alloc(16, 0xff), 0), { kind: 'corrupt', reason: 'bad length' }, 'absurd length')
  t.strictSame(scanRecord(Buffer.alloc(64), 0), { kind: 'corrupt', reason: 'bad length' }, 'zeros (a preallocated tail)')

  const future = encodeRecord(readings(1), 1)
  future.writeUInt8(2, recordHeaderBytes)
  future.writeUInt32LE(crc32(future.subarray(recordHeaderBytes)), 4)
  t.strictSame(scanRecord(future, 0), { kind: 'corrupt', reason: 'unknown record version' }, 'a whole record of another version')
})

t.test('CRC-32: the fallback matches zlib and the standard check value', async (t) => {
  for (const data of [Buffer.alloc(0), Buffer.from('123456789'), encodeRecord(readings(3), 1)]) {
    t.equal(crc32Fallback(data), zlib.crc32(data))
  }
  t.equal(crc32Fallback(Buffer.from('123456789')), 0xcbf43926, 'CRC-32 check value')
})
