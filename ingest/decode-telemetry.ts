import { Type } from 'typebox'
import type { Static } from 'typebox'
import { Compile } from 'typebox/compile'
import type { Validator } from 'typebox/compile'
import type { TLocalizedValidationError } from 'typebox/error'
import { PayloadRejection } from '../readings/reading.ts'
import type { NormalizedReading } from '../readings/reading.ts'
import { normalizeValue } from '../readings/vitals-catalogue.ts'

/** How far ahead of the server's clock a device's clock may run. */
export const MAX_CLOCK_AHEAD_MS = 5 * 60_000
/** Readings (or SenML records) per message. */
export const MAX_ITEMS = 500
/** Readings before this are a device with an unset clock, not history. */
export const EARLIEST_READING_MS = Date.UTC(2000, 0, 1)

export const TelemetryReadingSchema = Type.Object({
  metric: Type.String({ minLength: 1, maxLength: 64 }),
  value: Type.Number(),
  // Required: a value whose unit is guessed is a clinical risk, not a convenience.
  unit: Type.String({ minLength: 1, maxLength: 32 }),
  ts: Type.Integer({ description: 'ms since epoch, device clock' })
}, { additionalProperties: false })

export const TelemetryPayloadSchema = Type.Object({
  seq: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  readings: Type.Array(TelemetryReadingSchema, { minItems: 1, maxItems: 500 })
}, { additionalProperties: false })

export type TelemetryPayload = Static<typeof TelemetryPayloadSchema>

const telemetryChecker = Compile(TelemetryPayloadSchema)

/*
 * TypeBox's Errors() walks every item, and slowly: 80,000 items took 1.9 s on the event loop
 * (found by test/ingest/fuzz-payloads.test.ts). So a failed Check is explained in two cheap steps:
 * the envelope with items left opaque (the length cap refuses huge arrays at once), then the
 * first item that fails its own compiled check.
 */
const telemetryEnvelopeChecker = Compile(Type.Object({
  seq: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  readings: Type.Array(Type.Unknown(), { minItems: 1, maxItems: 500 })
}, { additionalProperties: false }))
const telemetryReadingChecker = Compile(TelemetryReadingSchema)

/** Even TypeBox's maxItems error walks every item: an over-long array is refused before it. */
export function refuseLongArray (items: readonly unknown[], at: string, reason: 'payload_schema' | 'senml_invalid'): void {
  if (items.length > MAX_ITEMS) {
    throw new PayloadRejection(reason, `${at === '' ? '(root)' : at}: at most ${MAX_ITEMS} items per message (got ${items.length})`)
  }
}

/** Explains why `items` (already within the envelope) failed, naming the first bad item. */
export function describeFirstBadItem (items: readonly unknown[], itemChecker: Pick<Validator, 'Check' | 'Errors'>, at: string): string {
  const index = items.findIndex((item) => !itemChecker.Check(item))
  if (index === -1) return `${at === '' ? '(root)' : at}: payload does not match the schema`
  return describeFirstError(itemChecker, items[index], `${at}/${index}`)
}

export interface DecodedPayload {
  seq: number | null
  readings: NormalizedReading[]
}

/**
 * Decodes a `devices/{deviceId}/telemetry` payload. Atomic: one bad reading rejects the
 * whole message, so a device's message is either stored entirely or not at all and the
 * device can resend it without creating a partial duplicate.
 */
export function decodeTelemetry (payload: Buffer, nowMs: number): DecodedPayload {
  const document = parseJsonPayload(payload)
  const readingsField = typeof document === 'object' && document !== null ? (document as { readings?: unknown }).readings : undefined
  if (Array.isArray(readingsField)) refuseLongArray(readingsField, '/readings', 'payload_schema')
  if (!telemetryEnvelopeChecker.Check(document)) {
    throw new PayloadRejection('payload_schema', describeFirstError(telemetryEnvelopeChecker, document))
  }
  if (!telemetryChecker.Check(document)) {
    throw new PayloadRejection('payload_schema', describeFirstBadItem(document.readings, telemetryReadingChecker, '/readings'))
  }
  const readings = document.readings.map((reading, index): NormalizedReading => {
    const where = `/readings/${index}`
    const ts = checkReadingTime(reading.ts, nowMs, `${where}/ts`)
    const normalized = withLocation(where, () => normalizeValue(reading.metric, reading.value, reading.unit))
    return { metric: reading.metric, value: normalized.value, unit: normalized.unit, ts }
  })
  return { seq: document.seq ?? null, readings }
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** Parses a payload as UTF-8 JSON (RFC 8259 §8.1), or rejects it as `payload_not_json`. */
export function parseJsonPayload (payload: Buffer): unknown {
  let text: string
  try {
    text = utf8.decode(payload)
  } catch {
    throw new PayloadRejection('payload_not_json', 'payload is not valid UTF-8')
  }
  try {
    return JSON.parse(text)
  } catch {
    throw new PayloadRejection('payload_not_json', 'payload is not valid JSON')
  }
}

/** Checks a device timestamp (ms since epoch) against the server clock and returns it. */
export function checkReadingTime (ts: number, nowMs: number, where: string): number {
  if (!Number.isSafeInteger(ts) || ts < EARLIEST_READING_MS) {
    throw new PayloadRejection('timestamp_invalid', `${where}: timestamp is not a time after 2000-01-01`)
  }
  if (ts > nowMs + MAX_CLOCK_AHEAD_MS) {
    throw new PayloadRejection('timestamp_in_future',
      `${where}: timestamp is more than ${MAX_CLOCK_AHEAD_MS / 1000} s ahead of the server clock`)
  }
  return ts
}

/** Runs `convert`, prefixing the location of the offending item to any rejection. */
export function withLocation<T> (where: string, convert: () => T): T {
  try {
    return convert()
  } catch (error) {
    if (error instanceof PayloadRejection) throw new PayloadRejection(error.reason, `${where}: ${error.message}`)
    throw error
  }
}

/** `<JSON Pointer (RFC 6901)>: <problem>` for the first schema violation in `document`. */
export function describeFirstError (checker: Pick<Validator, 'Errors'>, document: unknown, at = ''): string {
  // TypeBox reports errors depth first, each object's required and unknown keys before its values.
  const problem = checker.Errors(document)[0]
  if (problem === undefined) return 'payload does not match the schema'
  const located = locateProblem(problem)
  const pointer = at + located.pointer
  const message = located.message
  // Keys in the pointer are device-supplied: keep the message bounded.
  const shown = pointer === '' ? '(root)' : pointer
  return `${shown.length > 100 ? `${shown.slice(0, 100)}…` : shown}: ${message}`
}

/**
 * Points at the offending property itself: TypeBox reports a missing property at its parent
 * object and an unknown one as the `false` schema of `additionalProperties`.
 */
function locateProblem (problem: TLocalizedValidationError): { pointer: string, message: string } {
  if (problem.keyword === 'required') {
    const [missing] = problem.params.requiredProperties
    if (missing !== undefined) return { pointer: `${problem.instancePath}/${escapePointerToken(missing)}`, message: 'required property is missing' }
  }
  if (problem.keyword === 'boolean' && problem.schemaPath.endsWith('/additionalProperties')) {
    return { pointer: problem.instancePath, message: 'property is not allowed' }
  }
  if (problem.keyword === 'additionalProperties') {
    const [unknown] = problem.params.additionalProperties
    if (unknown !== undefined) return { pointer: `${problem.instancePath}/${escapePointerToken(unknown)}`, message: 'property is not allowed' }
  }
  return { pointer: problem.instancePath, message: problem.message }
}

/** RFC 6901 §3: `~` and `/` in a key are written `~0` and `~1`. */
function escapePointerToken (key: string): string {
  return key.replaceAll('~', '~0').replaceAll('/', '~1')
}
