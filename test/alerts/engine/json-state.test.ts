import t from 'tap'
import { copyJson, sameJson } from '../../../alerts/engine/json-state.ts'

// Rule states are copied and compared in the worker with these instead of structuredClone and
// JSON.stringify: they must answer what those do for the data rule states hold.

let seed = 42
const random = (): number => {
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
}
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!

/** Random JSON data shaped like rule states: objects of numbers, strings, booleans, null and arrays of number tuples. */
function randomJson (depth: number): unknown {
  const r = random()
  if (depth <= 0 || r < 0.35) return pick([0, -0, 1, 72.5, 1e-7, 1764115200572, -3.25, 'firing', '', 'heart_rate', true, false, null])
  if (r < 0.65) return Array.from({ length: Math.floor(random() * 5) }, () => randomJson(depth - 1))
  const out: Record<string, unknown> = {}
  for (const key of ['kind', 'metric', 'firing', 'since', 'points', 'recent', 'notedAt'].slice(0, 1 + Math.floor(random() * 7))) out[key] = randomJson(depth - 1)
  return out
}

/** One small change somewhere in `value` (or none), keeping key order. */
function mutate (value: unknown): unknown {
  if (random() < 0.3) return value
  if (typeof value !== 'object' || value === null) return pick([value, 73.5, 'cleared', null, false, 0.1 + 0.2])
  if (Array.isArray(value)) {
    if (value.length === 0 || random() < 0.2) return [...value, 1]
    const i = Math.floor(random() * value.length)
    return value.map((v, j) => j === i ? mutate(v) : v)
  }
  const keys = Object.keys(value)
  if (keys.length === 0) return { added: 1 }
  const key = pick(keys)
  return Object.fromEntries(keys.map((k) => [k, k === key ? mutate((value as Record<string, unknown>)[k]) : (value as Record<string, unknown>)[k]]))
}

function shares (a: unknown, b: unknown): boolean {
  if (typeof a !== 'object' || a === null) return false
  if (a === b) return true
  if (Array.isArray(a)) return a.some((v, i) => shares(v, (b as unknown[])[i]))
  return Object.keys(a).some((k) => shares((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}

t.test('copyJson: an equal copy sharing no object with the original', async (t) => {
  let copied = 0
  for (let i = 0; i < 5000; i++) {
    const value = randomJson(4)
    const copy = copyJson(value)
    if (JSON.stringify(copy) !== JSON.stringify(value) || shares(copy, value)) {
      t.fail(`not a deep copy: ${JSON.stringify(value)}`)
      return
    }
    copied++
  }
  t.equal(copied, 5000, '5,000 random states copied')
  const at = new Date(0)
  const withDate = copyJson({ at })
  t.ok(withDate.at instanceof Date && withDate.at !== at && withDate.at.getTime() === 0, 'a Date inside is copied as a Date')
})

t.test('sameJson says what comparing JSON.stringify says, for states and changed states', async (t) => {
  let same = 0
  let different = 0
  for (let i = 0; i < 20_000; i++) {
    const a = randomJson(4)
    const b = random() < 0.5 ? copyJson(a) : mutate(a)
    const expected = JSON.stringify(a) === JSON.stringify(b)
    if (sameJson(a, b) !== expected) {
      t.fail(`sameJson(${JSON.stringify(a)}, ${JSON.stringify(b)}) should be ${expected}`)
      return
    }
    if (expected) same++
    else different++
  }
  t.ok(same > 1000 && different > 1000, `agreed on 20,000 pairs (${same} same, ${different} different)`)
})

t.test('sameJson: undefined properties count as absent, key order does not matter, shapes must match', async (t) => {
  t.ok(sameJson({ a: 1, b: undefined }, { a: 1 }), 'undefined property = absent')
  t.ok(sameJson({ a: 1 }, { a: 1, b: undefined }))
  t.ok(sameJson({ a: 1, b: [1, 2] }, { b: [1, 2], a: 1 }), 'key order')
  t.notOk(sameJson({ a: 1 }, { a: 1, b: null }), 'null is a value')
  t.notOk(sameJson([1, 2], { 0: 1, 1: 2 }), 'an array is not an object')
  t.notOk(sameJson([], {}))
  t.notOk(sameJson(undefined, {}), 'no state before: changed')
  t.notOk(sameJson({ points: [[1, 2, 1, 0]] }, { points: [[1, 2, 1, 0], [2, 3, 1, 1]] }))
  t.notOk(sameJson(1, '1'))
  t.ok(sameJson(new Date(5), new Date(5)), 'non-plain objects: by their JSON')
})
