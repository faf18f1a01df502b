import { Type } from '@sinclair/typebox'
import type { Static, TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { TypeCheck } from '@sinclair/typebox/compiler'
import { PayloadRejection } from './reading.ts'
import type { NormalizedReading } from './reading.ts'
import { normalizeValue } from './vitals-catalogue.ts'

/** How far ahead of the server's clock a device's clock may run. */
export const MAX_CLOCK_AHEAD_MS = 5 * 60_000
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

const telemetryChecker = TypeCompiler.Compile(TelemetryPayloadSchema)

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
  if (!telemetryChecker.Check(document)) {
    throw new PayloadRejection('payload_schema', describeFirstError(telemetryChecker, document))
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
export function describeFirstError<T extends TSchema> (checker: TypeCheck<T>, document: unknown): string {
  const problem = checker.Errors(document).First()
  if (problem === undefined) return 'payload does not match the schema'
  // Keys in the pointer are device-supplied: keep the message bounded.
  const pointer = problem.path === '' ? '(root)' : problem.path
  return `${pointer.length > 100 ? `${pointer.slice(0, 100)}…` : pointer}: ${problem.message}`
}
