/**
 * Copying and comparing rule states, which are plain JSON data (objects, arrays, numbers,
 * strings, booleans, null: they are stored as jsonb). Both run for every rule of every patient in
 * every batch, in the alert worker thread. The general tools cost far more there: a worker's
 * structuredClone goes through a message port's serializer, and comparing two states by
 * JSON.stringify formats every float of their windows; together they were over half of the
 * worker's time (a profile of 50-patient batches: 3,302 and 3,600 of ~12,000 ms).
 */

function isPlainObject (value: object): value is Record<string, unknown> {
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/** A deep copy of plain JSON data; anything else inside (a Date, a Map) is copied by structuredClone. */
export function copyJson<T> (value: T): T {
  if (typeof value !== 'object' || value === null) return value
  if (Array.isArray(value)) return value.map(copyJson) as T
  if (!isPlainObject(value)) return structuredClone(value)
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(value)) out[key] = copyJson(value[key])
  return out as T
}

/**
 * Whether `a` and `b` hold the same JSON data, without serializing them: what
 * JSON.stringify(a) === JSON.stringify(b) says, except that key order does not matter (the same
 * state either way) and NaN or ±Infinity (which JSON writes as null) is never the same as
 * anything (a state holding one is stored again: harmless). As in JSON, a property holding
 * undefined counts as absent.
 */
export function sameJson (a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false
    for (let i = 0; i < a.length; i++) if (!sameJson(a[i], b[i])) return false
    return true
  }
  if (!isPlainObject(a) || !isPlainObject(b)) return JSON.stringify(a) === JSON.stringify(b)
  let count = 0
  for (const key of Object.keys(a)) {
    if (a[key] === undefined) continue
    count++
    if (!sameJson(a[key], b[key])) return false
  }
  for (const key of Object.keys(b)) if (b[key] !== undefined) count--
  return count === 0
}
