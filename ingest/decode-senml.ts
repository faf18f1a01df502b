import { Type } from 'typebox'
import { Compile } from 'typebox/compile'
import { PayloadRejection } from '../readings/reading.ts'
import type { NormalizedReading } from '../readings/reading.ts'
import { lookupMetric, lookupMetricByLoinc, normalizeValue } from '../readings/vitals-catalogue.ts'
import type { MetricEntry } from '../readings/vitals-catalogue.ts'
import { checkReadingTime, describeFirstBadItem, refuseLongArray, describeFirstError, parseJsonPayload, withLocation } from './decode-telemetry.ts'
import type { DecodedPayload } from './decode-telemetry.ts'

/** RFC 8428 §4.4: the version this decoder implements, and the default when `bver` is absent. */
export const SENML_VERSION = 10
// RFC 8428 §4.5.3: times below 2^28 s are relative to "now", at or above it are Unix time.
const RELATIVE_TIME_LIMIT_S = 2 ** 28
// RFC 8428 §4.5.1: the resolved name's character set.
const RESOLVED_NAME = /^[A-Za-z0-9][-:./_A-Za-z0-9]*$/

// RFC 8428 §4.3 labels and JSON types. Other labels stay allowed: §4.4 says to ignore them.
export const SenmlRecordSchema = Type.Object({
  bn: Type.Optional(Type.String()),
  bt: Type.Optional(Type.Number()),
  bu: Type.Optional(Type.String()),
  bv: Type.Optional(Type.Number()),
  bs: Type.Optional(Type.Number()),
  bver: Type.Optional(Type.Integer({ minimum: 1 })),
  n: Type.Optional(Type.String()),
  u: Type.Optional(Type.String()),
  v: Type.Optional(Type.Number()),
  vs: Type.Optional(Type.String()),
  vb: Type.Optional(Type.Boolean()),
  vd: Type.Optional(Type.String()),
  s: Type.Optional(Type.Number()),
  t: Type.Optional(Type.Number()),
  ut: Type.Optional(Type.Number()),
  // Vigil extension, read from the first record only: SenML has no message sequence number,
  // and a plain label (not must-understand, §4.4) lets other SenML receivers ignore it.
  seq: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }))
})

export const SenmlPackSchema = Type.Array(SenmlRecordSchema, { minItems: 1, maxItems: 500 })

const packChecker = Compile(SenmlPackSchema)
// Cheap explanations of a failed Check: see describeFirstBadItem.
const packEnvelopeChecker = Compile(Type.Array(Type.Unknown(), { minItems: 1, maxItems: 500 }))
const recordChecker = Compile(SenmlRecordSchema)

/**
 * Decodes a `devices/{deviceId}/senml` payload: an RFC 8428 SenML JSON pack of numeric
 * records. Atomic like `decodeTelemetry`: one bad record rejects the whole pack.
 */
export function decodeSenml (payload: Buffer, nowMs: number): DecodedPayload {
  const pack = parseJsonPayload(payload)
  if (Array.isArray(pack)) refuseLongArray(pack, '', 'senml_invalid')
  if (!packEnvelopeChecker.Check(pack)) {
    throw new PayloadRejection('senml_invalid', describeFirstError(packEnvelopeChecker, pack))
  }
  if (!packChecker.Check(pack)) {
    throw new PayloadRejection('senml_invalid', describeFirstBadItem(pack, recordChecker, ''))
  }

  // RFC 8428 §4.1: a base field applies to its record and every later record until the
  // next record that sets the same base field.
  let baseName = ''
  let baseTime = 0
  let baseUnit: string | undefined
  let baseValue = 0
  let version = SENML_VERSION

  const readings = pack.map((record, index): NormalizedReading => {
    const where = `/${index}`
    const invalid = (message: string) => new PayloadRejection('senml_invalid', `${where}: ${message}`)

    for (const label of Object.keys(record)) {
      if (label.endsWith('_')) throw invalid(`field ${JSON.stringify(label.slice(0, 32))} must be understood (RFC 8428 §4.4) and is not supported`)
    }
    if (record.bver !== undefined) {
      if (record.bver > SENML_VERSION) throw invalid(`SenML version ${record.bver} is newer than ${SENML_VERSION} (RFC 8428 §4.4)`)
      if (index > 0 && record.bver !== version) throw invalid('all records in a pack must have the same version (RFC 8428 §4.4)')
      version = record.bver
    }
    if (record.bn !== undefined) baseName = record.bn
    if (record.bt !== undefined) baseTime = record.bt
    if (record.bu !== undefined) baseUnit = record.bu
    if (record.bv !== undefined) baseValue = record.bv

    const name = baseName + (record.n ?? '')
    if (!RESOLVED_NAME.test(name)) throw invalid('resolved name (bn + n) is empty or has characters outside RFC 8428 §4.5.1')

    // RFC 8428 §4.2: exactly one value field, or none when a sum is present.
    if (record.vs !== undefined || record.vb !== undefined || record.vd !== undefined) {
      throw invalid('only numeric values (v) are supported for vital signs')
    }
    if (record.v === undefined) {
      throw invalid(record.s === undefined ? 'record has no value (RFC 8428 §4.2)' : 'sum-only records are not supported; send v')
    }
    // RFC 8428 §4.5.4: the value is bv + v; sums (s, bs) are not stored.
    const value = baseValue + record.v

    // RFC 8428 §4.5.3: SenML time is seconds; bt + t below 2^28 counts from now.
    const seconds = baseTime + (record.t ?? 0)
    const tsMs = Math.round(seconds < RELATIVE_TIME_LIMIT_S ? nowMs + seconds * 1000 : seconds * 1000)
    const ts = checkReadingTime(tsMs, nowMs, where)

    const metric = resolveMetric(name)
    if (metric === undefined) {
      throw new PayloadRejection('unknown_metric', `${where}: no catalogue metric for SenML name ${JSON.stringify(name.slice(0, 96))}`)
    }
    // RFC 8428 §4.5.2 allows no unit at all; for vital signs a guessed unit is a clinical risk.
    const unit = record.u ?? baseUnit
    if (unit === undefined) {
      throw new PayloadRejection('unit_unsupported', `${where}: no unit (u or bu); ${metric.name} needs one, e.g. ${metric.unit}`)
    }
    const normalized = withLocation(where, () => normalizeValue(metric.name, value, unit))
    return { metric: metric.name, value: normalized.value, unit: normalized.unit, ts }
  })

  return { seq: pack[0]?.seq ?? null, readings }
}

/**
 * Maps a resolved SenML name to a metric: the whole name, or its last segment after `:` or
 * `/` (devices put their URN or id in `bn`), each as a catalogue name or a LOINC code.
 */
function resolveMetric (name: string): MetricEntry | undefined {
  const lastSegment = name.slice(Math.max(name.lastIndexOf(':'), name.lastIndexOf('/')) + 1)
  for (const candidate of [name, lastSegment]) {
    const entry = lookupMetric(candidate) ?? lookupMetricByLoinc(candidate)
    if (entry !== undefined) return entry
  }
  return undefined
}
