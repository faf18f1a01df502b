import { metricOfIdCode } from './vital-signs.ts'
import type { MetricName } from '../readings/vitals-catalogue.ts'

// An Observation is one reading (or a systolic + diastolic pair): its id is the reading's key
// (patient, device, instant, metric), packed into the 64 characters FHIR R4 allows
// (§2.24.0.1 id: [A-Za-z0-9\-\.]{1,64}). Two UUIDs in base 62 (22 characters each), the
// instant in base 36, the metric's short code, joined by dots.

const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
const BASE62 = /^[0-9A-Za-z]{1,22}$/
const MAX_UUID = (1n << 128n) - 1n

function uuidToBase62 (uuid: string): string {
  let n = BigInt(`0x${uuid.replace(/-/g, '')}`)
  let out = ''
  do {
    out = DIGITS[Number(n % 62n)]! + out
    n /= 62n
  } while (n > 0n)
  return out
}

function base62ToUuid (text: string): string | null {
  if (!BASE62.test(text)) return null
  let n = 0n
  for (const c of text) n = n * 62n + BigInt(DIGITS.indexOf(c))
  if (n > MAX_UUID) return null
  const hex = n.toString(16).padStart(32, '0')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

export interface ObservationKey {
  patientId: string
  deviceId: string
  ts: number
  /** The reading's metric, or 'bp' for a blood-pressure panel (keyed by its instant and device). */
  metric: MetricName | 'bp'
}

export function observationId (key: ObservationKey, idCode: string): string {
  if (!UUID.test(key.patientId) || !UUID.test(key.deviceId) || !Number.isSafeInteger(key.ts) || key.ts < 0) {
    throw new RangeError('observation key needs two UUIDs and a non-negative integer instant')
  }
  return `${uuidToBase62(key.patientId)}.${uuidToBase62(key.deviceId)}.${key.ts.toString(36)}.${idCode}`
}

/** The key an id names; null for anything observationId would not write. */
export function parseObservationId (id: string): ObservationKey | null {
  const parts = id.split('.')
  if (parts.length !== 4) return null
  const [patient, device, ts, code] = parts as [string, string, string, string]
  const patientId = base62ToUuid(patient)
  const deviceId = base62ToUuid(device)
  if (patientId === null || deviceId === null || !/^[0-9a-z]{1,11}$/.test(ts)) return null
  const ms = parseInt(ts, 36)
  const metric = metricOfIdCode(code)
  if (!Number.isSafeInteger(ms) || metric === undefined) return null
  const key = { patientId, deviceId, ts: ms, metric }
  // One id per Observation: only the form observationId writes (no leading zeros, no other case).
  return observationId(key, code) === id ? key : null
}
