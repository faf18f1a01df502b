// The type provider re-exports TypeBox 1.x, the version its types are written against.
import { Type } from '@fastify/type-provider-typebox'
import type { TSchema } from '@fastify/type-provider-typebox'
import { listMetrics } from '../../readings/vitals-catalogue.ts'
import type { MetricName as CatalogueMetric } from '../../readings/vitals-catalogue.ts'
import type { ReadingPosition } from '../../readings/reading-store.ts'
import { VigilError } from '../../errors/catalogue.ts'

// ---------------------------------------------------------------------------------------
// Shared shapes
// ---------------------------------------------------------------------------------------

export const Uuid = Type.String({ format: 'uuid' })
export const IdParams = Type.Object({ id: Uuid }, { additionalProperties: false })

export const ErrorBody = Type.Object({
  code: Type.String({ description: 'Stable error code, e.g. VIGIL_ERR_VALIDATION' }),
  message: Type.String(),
  details: Type.Optional(Type.Array(Type.Object({
    path: Type.String(),
    message: Type.String(),
    line: Type.Optional(Type.Integer({ minimum: 1, description: 'In a submitted document (alert rules): 1-based line of the problem' })),
    column: Type.Optional(Type.Integer({ minimum: 1, description: '1-based column' }))
  }))),
  requestId: Type.Optional(Type.String())
})

/** Error responses every `/v1` route can give, plus the route's own (404, 409 …). */
export function errorResponses (...statuses: number[]): Record<number, TSchema> {
  const out: Record<number, TSchema> = {}
  for (const status of [400, 401, 403, ...statuses, 429, 500, 503]) out[status] = ErrorBody
  return out
}

export const PageLimit = Type.Integer({ minimum: 1, maximum: 1000, default: 100 })

/** Lists keyed by id: the handler checks the cursor, so a bad one is VIGIL_ERR_BAD_CURSOR, not a schema error. */
export const PageQuery = Type.Object({
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 64, description: 'nextCursor of the previous page' }))
}, { additionalProperties: false })

const NextCursor = Type.Union([Type.String(), Type.Null()], { description: 'null on the last page' })

export function page<T extends TSchema> (item: T) {
  return Type.Object({ items: Type.Array(item), nextCursor: NextCursor })
}

/** Stores are asked for limit + 1 rows: the extra one only says whether another page exists. */
export function pageOf<T> (rows: T[], limit: number, cursorOf: (last: T) => string): { items: T[], nextCursor: string | null } {
  const items = rows.slice(0, limit)
  const last = items[items.length - 1]
  return { items, nextCursor: rows.length > limit && last !== undefined ? cursorOf(last) : null }
}

// ---------------------------------------------------------------------------------------
// Patients
// ---------------------------------------------------------------------------------------

export const Patient = Type.Object({
  id: Uuid,
  displayName: Type.String(),
  createdAt: Type.String({ format: 'date-time' })
})

export const NewPatient = Type.Object({
  // `\S`: at least one non-space character; the handler stores it trimmed.
  displayName: Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' })
}, { additionalProperties: false })

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

const VersionString = Type.String({ minLength: 1, maxLength: 100, pattern: '^\\S(.*\\S)?$' })
const DeviceName = Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' })

const NullableInstant = (options: { description: string }) => Type.Union([Type.String({ format: 'date-time' }), Type.Null()], options)

export const Device = Type.Object({
  id: Uuid,
  name: Type.String(),
  mac: Type.String({ description: 'Lower-case, colon-separated (6 or 8 octets)' }),
  ownerUserId: Type.Union([Uuid, Type.Null()]),
  assignedByUserId: Type.Union([Uuid, Type.Null()]),
  firmwareVersion: Type.String(),
  softwareVersion: Type.String(),
  startedAt: Type.String({ format: 'date-time' }),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
  patientId: Type.Union([Uuid, Type.Null()], { description: 'Current assignment; null for callers without patients:read (device integrators …)' }),
  presence: Type.Object({
    connected: Type.Boolean({ description: 'connected to the broker now' }),
    since: NullableInstant({ description: 'when it last connected or disconnected' }),
    lastReadingAt: NullableInstant({ description: 'its last accepted reading' }),
    batteryPercent: Type.Union([Type.Number(), Type.Null()], { description: 'from its last devices/{id}/status report' }),
    lastStatusAt: NullableInstant({ description: 'its last status report' })
  }, { description: 'What the broker knows of the device (connections, readings, status reports)' })
})

export const Assignment = Type.Object({
  patientId: Type.Union([Uuid, Type.Null()], { description: 'null for callers without patients:read (device integrators …)' }),
  validFrom: Type.String({ format: 'date-time' }),
  validTo: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'null while current' })
})

export const DeviceVersion = Type.Object({
  firmwareVersion: Type.String(),
  softwareVersion: Type.String(),
  changedAt: Type.String({ format: 'date-time' })
})

export const DeviceDetail = Type.Object({
  ...Device.properties,
  versions: Type.Array(DeviceVersion, { description: 'Oldest first' }),
  assignments: Type.Array(Assignment, { description: 'Newest first' })
})

export const NewDevice = Type.Object({
  name: DeviceName,
  mac: Type.String({
    minLength: 1,
    maxLength: 64,
    description: 'AA:BB:CC:DD:EE:FF, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff; 8-octet EUI-64 in the same forms'
  }),
  firmwareVersion: VersionString,
  softwareVersion: VersionString,
  startedAt: Type.String({
    maxLength: 40,
    description: 'Purchase / start of use: ISO 8601 date (2025-11-01) or RFC 3339 date-time with offset; not in the future',
    examples: ['2025-11-01', '2025-11-01T09:30:00Z']
  }),
  ownerUserId: Type.Optional(Type.Union([Uuid, Type.Null()]))
}, { additionalProperties: false })

export const DevicePatch = Type.Object({
  name: Type.Optional(DeviceName),
  firmwareVersion: Type.Optional(VersionString),
  softwareVersion: Type.Optional(VersionString),
  ownerUserId: Type.Optional(Type.Union([Uuid, Type.Null()]))
}, { additionalProperties: false, minProperties: 1 })

export const AssignmentRequest = Type.Object({
  patientId: Uuid,
  validFrom: Type.Optional(Type.String({ format: 'date-time', description: 'Defaults to now' }))
}, { additionalProperties: false })

export const DeviceCredential = Type.Object({
  username: Type.String({ description: 'MQTT username (the device id)' }),
  password: Type.String({ description: 'Shown once; only a hash is stored' })
})

export const Rejection = Type.Object({
  id: Type.String(),
  topic: Type.String(),
  reason: Type.String(),
  message: Type.String(),
  payload: Type.Union([Type.String(), Type.Null()], {
    description: 'First 4096 bytes as UTF-8 (PHI of the patient the device was assigned to); null when redacted'
  }),
  payloadRedacted: Type.Boolean({ description: 'true: the caller does not reach the payload\'s patient (or lacks phi:read)' }),
  payloadBytes: Type.Integer(),
  receivedAt: Type.String({ format: 'date-time' })
})

// ---------------------------------------------------------------------------------------
// Readings
// ---------------------------------------------------------------------------------------

/** The catalogue's names, so an unknown metric is a 400 and the OpenAPI document lists them. */
export const MetricName = Type.Unsafe<CatalogueMetric>({ type: 'string', enum: listMetrics().map((m) => m.metric) })

function instant (bound: string) {
  return Type.String({ format: 'date-time', description: `${bound}; RFC 3339 date-time, e.g. 2025-11-26T09:00:00Z` })
}

export const Reading = Type.Object({
  metric: Type.String(),
  value: Type.Number(),
  unit: Type.String({ description: 'UCUM' }),
  ts: Type.String({ format: 'date-time', description: 'Device clock' }),
  deviceId: Uuid,
  seq: Type.Union([Type.Integer(), Type.Null()])
})

export const ReadingsQuery = Type.Object({
  metric: Type.Optional(MetricName),
  from: Type.Optional(instant('Inclusive')),
  to: Type.Optional(instant('Exclusive')),
  limit: PageLimit,
  cursor: Type.Optional(Type.String({ maxLength: 512, description: 'nextCursor of the previous page (opaque)' }))
}, { additionalProperties: false })

export const AggregateQuery = Type.Object({
  metric: MetricName,
  from: instant('Inclusive'),
  to: instant('Exclusive'),
  every: Type.String({
    pattern: '^[1-9][0-9]{0,5}[smhd]$',
    default: '1m',
    description: 'Bucket width: <n>s, <n>m, <n>h or <n>d (buckets aligned to the Unix epoch)'
  }),
  fn: Type.Union([Type.Literal('mean'), Type.Literal('min'), Type.Literal('max'), Type.Literal('count')], { default: 'mean' })
}, { additionalProperties: false })

export const AggregateResult = Type.Object({
  metric: Type.String(),
  fn: Type.String(),
  every: Type.String(),
  items: Type.Array(Type.Object({
    ts: Type.String({ format: 'date-time', description: 'Bucket start' }),
    value: Type.Union([Type.Number(), Type.Null()], { description: 'null for an empty bucket (count gives 0)' })
  }))
})

// ---------------------------------------------------------------------------------------
// Pure input parsers (unit-tested directly)
// ---------------------------------------------------------------------------------------

const MAC_FORMS = [
  /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/, // AA:BB:CC:DD:EE:FF
  /^[0-9a-f]{2}(?:-[0-9a-f]{2}){5}$/, // aa-bb-cc-dd-ee-ff (IEEE 802 canonical)
  /^[0-9a-f]{4}(?:\.[0-9a-f]{4}){2}$/, // aabb.ccdd.eeff (Cisco)
  /^[0-9a-f]{12}$/,
  /^[0-9a-f]{2}(?::[0-9a-f]{2}){7}$/, // EUI-64 in the same four forms
  /^[0-9a-f]{2}(?:-[0-9a-f]{2}){7}$/,
  /^[0-9a-f]{4}(?:\.[0-9a-f]{4}){3}$/,
  /^[0-9a-f]{16}$/
]

/**
 * A MAC-48 / EUI-48 or EUI-64 in one of the usual spellings, as lower-case colon-separated
 * octets (the form stored and matched for uniqueness); null when it is none of them.
 * Separators must be consistent: `aa:bb-cc…` is refused.
 */
export function normalizeMac (input: string): string | null {
  const text = input.trim().toLowerCase()
  if (!MAC_FORMS.some((form) => form.test(text))) return null
  const hex = text.replace(/[:.-]/g, '')
  return hex.match(/../g)!.join(':')
}

const DATE_OR_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2}))?$/

/**
 * An ISO 8601 calendar date (taken as 00:00 UTC) or an RFC 3339 date-time with an offset,
 * as ms since epoch; null when malformed or not a real calendar day/time.
 */
export function parseDateOrDateTime (input: string): number | null {
  const m = DATE_OR_DATE_TIME.exec(input)
  if (m === null) return null
  const [, year, month, day, hour = '00', minute = '00', second = '00'] = m
  // Date.parse rolls 2025-02-30 over to March: check the fields are in range ourselves.
  const y = Number(year)
  const mo = Number(month)
  const d = Number(day)
  const daysInMonth = new Date(Date.UTC(y, mo, 0)).getUTCDate()
  if (mo < 1 || mo > 12 || d < 1 || d > daysInMonth) return null
  if (Number(hour) > 23 || Number(minute) > 59 || Number(second) > 59) return null
  const ms = Date.parse(m[4] === undefined ? `${input}T00:00:00Z` : input.replace(' ', 'T'))
  return Number.isNaN(ms) ? null : ms
}

const EVERY_UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

/** `90s`, `5m`, `1h`, `7d` → ms; null when malformed. */
export function parseEvery (input: string): number | null {
  const m = /^([1-9][0-9]{0,5})([smhd])$/.exec(input)
  if (m === null) return null
  return Number(m[1]) * EVERY_UNIT_MS[m[2] as keyof typeof EVERY_UNIT_MS]
}

/**
 * The smallest bucket width, in the largest readable unit, that keeps [from, to) within
 * `maxBuckets` (an unaligned range can touch one bucket more than range / width).
 */
export function suggestEvery (rangeMs: number, maxBuckets: number): string {
  const needed = Math.ceil(rangeMs / (maxBuckets - 1))
  if (needed <= 60_000) return `${Math.ceil(needed / 1000)}s`
  if (needed <= 3_600_000) return `${Math.ceil(needed / 60_000)}m`
  if (needed <= 86_400_000) return `${Math.ceil(needed / 3_600_000)}h`
  return `${Math.ceil(needed / 86_400_000)}d`
}

/** Buckets aligned to the epoch that [from, to) touches. */
export function bucketCount (from: number, to: number, everyMs: number): number {
  return Math.floor((to - 1) / everyMs) - Math.floor(from / everyMs) + 1
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Readings cursor: base64url of `[ts, deviceId, metric]`. Opaque to clients; the format may change. */
export function encodeReadingCursor (position: ReadingPosition): string {
  return Buffer.from(JSON.stringify([position.ts, position.deviceId, position.metric])).toString('base64url')
}

export function decodeReadingCursor (cursor: string): ReadingPosition {
  const bad = new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned; start again without it')
  if (!/^[A-Za-z0-9_-]{1,512}$/.test(cursor)) throw bad
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    throw bad
  }
  if (!Array.isArray(value) || value.length !== 3) throw bad
  const [ts, deviceId, metric] = value as unknown[]
  if (!Number.isSafeInteger(ts) || typeof deviceId !== 'string' || !UUID.test(deviceId) ||
    typeof metric !== 'string' || !/^[a-z0-9_]{1,64}$/.test(metric)) throw bad
  return { ts: ts as number, deviceId, metric }
}

/** Id-keyed lists (patients, devices): the cursor is the last item's id. */
export function decodeIdCursor (cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined
  if (!UUID.test(cursor)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned; start again without it')
  return cursor.toLowerCase()
}

/** Rejections: the cursor is the last row's (bigserial) id. 18 digits keeps it inside bigint. */
export function decodeSerialCursor (cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined
  if (!/^[1-9][0-9]{0,17}$/.test(cursor)) throw new VigilError('VIGIL_ERR_BAD_CURSOR', 'cursor is not one this API returned; start again without it')
  return cursor
}

export function invalid (path: string, message: string): VigilError {
  return new VigilError('VIGIL_ERR_VALIDATION', `${path} ${message}`, [{ path, message }])
}

/** RFC 3339 allows a leap second (…:60) that Date cannot represent: refuse it rather than guess. */
export function instantMs (value: string, path: string): number {
  const ms = Date.parse(value)
  if (Number.isNaN(ms)) throw invalid(path, 'must be a date-time JavaScript can represent')
  return ms
}
