import zlib from 'node:zlib'
import type { StoredReading } from './reading.ts'

/*
 * The spool's record codec (pure): how a batch of readings is framed on disk and how a segment's
 * bytes are read back, telling a whole record from a torn tail or corruption.
 *
 * Record: u32le bodyLength | u32le crc32(body) | body
 * body:   u8 version (1) | u32le readingCount | f64le appendedAtMs | JSON [[patientId, deviceId, metric, value, unit, ts, seq], …]
 */

const recordVersion = 1
/** bodyLength and crc32: a record's first bytes, enough to learn its length. */
export const recordHeaderBytes = 8
const bodyFixedBytes = 13
/** The header and the body's fixed fields: enough to learn when a record was appended. */
export const recordPrefixBytes = recordHeaderBytes + bodyFixedBytes
/** No legitimate record comes near this; a larger length prefix is garbage. */
const maxRecordBytes = 256 * 1024 * 1024

const crcTable = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

/** CRC-32 (IEEE 802.3, as zlib); fallback for Node 20 before 20.15, which lacks zlib.crc32. */
export function crc32Fallback (data: Uint8Array): number {
  let crc = 0xffffffff
  for (let i = 0; i < data.length; i++) crc = crcTable[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8)
  return (crc ^ 0xffffffff) >>> 0
}

export const crc32: (data: Uint8Array) => number = typeof zlib.crc32 === 'function' ? (data) => zlib.crc32(data) : crc32Fallback

type ReadingTuple = [string, string, string, number, string, number, number | null]

export function encodeRecord (readings: readonly StoredReading[], appendedAt: number): Buffer {
  const tuples: ReadingTuple[] = readings.map((r) => [r.patientId, r.deviceId, r.metric, r.value, r.unit, r.ts, r.seq])
  const json = Buffer.from(JSON.stringify(tuples), 'utf8')
  const record = Buffer.allocUnsafe(recordHeaderBytes + bodyFixedBytes + json.length)
  const bodyLength = bodyFixedBytes + json.length
  if (bodyLength > maxRecordBytes) throw new RangeError(`spool record too large (${bodyLength} bytes)`)
  record.writeUInt32LE(bodyLength, 0)
  record.writeUInt8(recordVersion, recordHeaderBytes)
  record.writeUInt32LE(readings.length, recordHeaderBytes + 1)
  record.writeDoubleLE(appendedAt, recordHeaderBytes + 5)
  json.copy(record, recordHeaderBytes + bodyFixedBytes)
  record.writeUInt32LE(crc32(record.subarray(recordHeaderBytes)), 4)
  return record
}

export type RecordScan =
  | { kind: 'record', length: number, count: number, appendedAt: number, body: Buffer }
  | { kind: 'incomplete' }
  | { kind: 'corrupt', reason: string }

/**
 * Reads the record at `offset` of `buf`. `incomplete` means the buffer ends inside it (a torn
 * tail when the buffer is the whole file); `corrupt` means the bytes are not a record.
 */
export function scanRecord (buf: Buffer, offset: number): RecordScan {
  if (buf.length - offset < recordHeaderBytes) return { kind: 'incomplete' }
  const bodyLength = buf.readUInt32LE(offset)
  if (bodyLength < bodyFixedBytes || bodyLength > maxRecordBytes) return { kind: 'corrupt', reason: 'bad length' }
  if (buf.length - offset - recordHeaderBytes < bodyLength) return { kind: 'incomplete' }
  const body = buf.subarray(offset + recordHeaderBytes, offset + recordHeaderBytes + bodyLength)
  if (crc32(body) !== buf.readUInt32LE(offset + 4)) return { kind: 'corrupt', reason: 'checksum mismatch' }
  if (body.readUInt8(0) !== recordVersion) return { kind: 'corrupt', reason: 'unknown record version' }
  return { kind: 'record', length: recordHeaderBytes + bodyLength, count: body.readUInt32LE(1), appendedAt: body.readDoubleLE(5), body }
}

/** The whole record's length as its header declares it (unchecked: scanRecord checks). */
export function declaredRecordLength (header: Buffer): number {
  return recordHeaderBytes + header.readUInt32LE(0)
}

/** appendedAt from a record's first recordPrefixBytes (unchecked: for stats), null when shorter. */
export function appendedAtOfPrefix (prefix: Buffer): number | null {
  return prefix.length >= recordPrefixBytes ? prefix.readDoubleLE(recordHeaderBytes + 5) : null
}

export function decodeRecordBody (body: Buffer): StoredReading[] {
  const tuples = JSON.parse(body.subarray(bodyFixedBytes).toString('utf8')) as ReadingTuple[]
  return tuples.map(([patientId, deviceId, metric, value, unit, ts, seq]) => ({ patientId, deviceId, metric, value, unit, ts, seq }))
}
