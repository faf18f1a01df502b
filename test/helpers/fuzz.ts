import { EARLIEST_READING_MS } from '../../ingest/decode-telemetry.ts'
import type { DecodedPayload } from '../../ingest/decode-telemetry.ts'
import { PayloadRejection } from '../../readings/reading.ts'
import type { RejectionReason } from '../../readings/reading.ts'
import { lookupMetric, vitalsCatalogue } from '../../readings/vitals-catalogue.ts'
import type { MetricName, UnitConversion } from '../../readings/vitals-catalogue.ts'

// Seeded, bounded fuzzing: one seed replays every case of a run. The default seed is fixed so
// CI runs are reproducible; FUZZ_SEED=random explores, and the seed is printed either way.

export const DEFAULT_FUZZ_SEED = 0x5eed2026

export interface FuzzSettings {
  seed: number
  cases: number
}

/** FUZZ_SEED (decimal, 0x-hex or `random`) and FUZZ_CASES override the defaults. */
export function fuzzSettings (defaultCases: number, env: Record<string, string | undefined> = process.env): FuzzSettings {
  return { seed: readSeed(env.FUZZ_SEED), cases: readCases(env.FUZZ_CASES, defaultCases) }
}

function readSeed (raw: string | undefined): number {
  if (raw === undefined || raw.trim() === '') return DEFAULT_FUZZ_SEED
  if (raw.trim() === 'random') return Math.floor(Math.random() * 2 ** 32)
  const seed = Number(raw.trim())
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new Error(`FUZZ_SEED must be an integer between 0 and ${2 ** 32 - 1}, 0x-hex, or "random" (got "${raw}")`)
  }
  return seed
}

function readCases (raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw.trim() === '') return fallback
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1 || Number(raw) > 10_000_000) {
    throw new Error(`FUZZ_CASES must be an integer between 1 and 10000000 (got "${raw}")`)
  }
  return Number(raw)
}

export interface Random {
  /** Uniform in [0, 1). */
  float (): number
  /** Uniform integer in [0, below). */
  int (below: number): number
  /** Uniform integer in [min, max]. */
  between (min: number, max: number): number
  chance (probability: number): boolean
  pick<T> (items: readonly T[]): T
  bytes (length: number): Buffer
}

/** mulberry32: tiny, fast and good enough to drive mutations (not for cryptography). */
export function createRandom (seed: number): Random {
  let state = seed >>> 0
  const float = (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let z = state
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }
  const int = (below: number): number => Math.floor(float() * below)
  return {
    float,
    int,
    between: (min, max) => min + int(max - min + 1),
    chance: (probability) => float() < probability,
    pick: (items) => {
      if (items.length === 0) throw new Error('pick from an empty list')
      return items[int(items.length)]!
    },
    bytes: (length) => {
      const out = Buffer.allocUnsafe(length)
      for (let i = 0; i < length; i++) out[i] = int(256)
      return out
    }
  }
}

/**
 * An independent stream per purpose (FNV-1a of the label mixed into the seed), so a phase
 * that draws differently leaves the other phases' cases as they were.
 */
export function deriveSeed (seed: number, label: string): number {
  let hash = 0x811c9dc5
  for (const byte of Buffer.from(label, 'utf8')) hash = Math.imul(hash ^ byte, 0x01000193)
  return (hash ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutation

// Bytes that mean something to a JSON or MQTT parser, or to a UTF-8 decoder.
const interestingBytes = [
  0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0xc0, 0xc1, 0xed, 0xf4, 0xf5,
  0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x2d, 0x2e, 0x65, 0x30, 0x39,
  0x2b, 0x23, 0x2f, 0x24
]

// Ill-formed UTF-8 (RFC 3629 §3): overlong, surrogate, beyond U+10FFFF, truncated sequences.
const badUtf8 = [[0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0xff], [0xf0, 0x9f, 0x98]]

/** 1 to `maxRounds` random byte edits; returns a new buffer. */
export function mutateBytes (random: Random, input: Buffer, maxRounds = 4): Buffer {
  let bytes = Buffer.from(input)
  const rounds = random.between(1, maxRounds)
  for (let round = 0; round < rounds; round++) {
    const at = random.int(bytes.length + 1)
    switch (random.int(9)) {
      case 0:
        if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)]! ^= 1 << random.int(8)
        break
      case 1:
        if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)] = random.pick(interestingBytes)
        break
      case 2:
        if (bytes.length > 0) bytes[Math.min(at, bytes.length - 1)] = random.int(256)
        break
      case 3:
        bytes = Buffer.concat([bytes.subarray(0, at), random.bytes(random.between(1, 8)), bytes.subarray(at)])
        break
      case 4:
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(Math.min(bytes.length, at + random.between(1, 16)))])
        break
      case 5: {
        const end = Math.min(bytes.length, at + random.between(1, 64))
        bytes = Buffer.concat([bytes.subarray(0, end), bytes.subarray(at, end), bytes.subarray(end)])
        break
      }
      case 6:
        bytes = bytes.subarray(0, at)
        break
      case 7:
        bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(random.pick(badUtf8)), bytes.subarray(at)])
        break
      default:
        bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(random.pick(unicodeSamples), 'utf8'), bytes.subarray(at)])
    }
  }
  return bytes
}

// ---------------------------------------------------------------------------------------------
// Payloads: valid seeds from the vitals catalogue, then structural, textual and byte mutations

export type PayloadKind = 'telemetry' | 'senml'

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
type Container = Json[] | { [key: string]: Json }

const metricNames = Object.keys(vitalsCatalogue) as MetricName[]

interface PlausibleReading {
  metric: MetricName
  loinc: string
  unit: string
  value: number
  ts: number
}

/** A reading inside the catalogue's range, in any accepted unit, from the last half hour. */
function plausibleReading (random: Random, nowMs: number, metric = random.pick(metricNames), unit?: string): PlausibleReading {
  const entry = vitalsCatalogue[metric]
  const units = entry.units as Readonly<Record<string, UnitConversion>>
  const chosenUnit = unit ?? random.pick(Object.keys(units))
  const conversion = units[chosenUnit]!
  // 5 % inside each end, so converting back and rounding cannot leave the range.
  const canonical = entry.min + (entry.max - entry.min) * (0.05 + 0.9 * random.float())
  const raw = canonical / conversion.scale - (conversion.offset ?? 0)
  return { metric, loinc: entry.loinc, unit: chosenUnit, value: Number(raw.toFixed(2)), ts: nowMs - random.int(30 * 60_000) }
}

/** A valid `devices/{id}/telemetry` document (README: JSON telemetry). */
export function validTelemetry (random: Random, nowMs: number): { [key: string]: Json } {
  const readings = Array.from({ length: random.between(1, 4) }, () => {
    const r = plausibleReading(random, nowMs)
    return { metric: r.metric, value: r.value, unit: r.unit, ts: r.ts }
  })
  return random.chance(0.8) ? { seq: random.int(1_000_000), readings } : { readings }
}

const senmlBaseNames = ['', 'urn:dev:mac:0024befffe804ff1:', 'vigil/oximeter/', 'urn:dev:ow:10e2073a0108006:']

/** A valid RFC 8428 pack for `devices/{id}/senml` (README: SenML), in one of its time and unit styles. */
export function validSenml (random: Random, nowMs: number): Array<{ [key: string]: Json }> {
  const count = random.between(1, 4)
  const baseName = random.pick(senmlBaseNames)
  const timeStyle = random.pick(['base-time', 'record-time', 'relative'] as const)
  const baseUnit = random.chance(0.25)
  const baseValue = random.chance(0.1) ? 10 : 0
  const baseTime = Math.floor((nowMs - random.int(30 * 60_000)) / 1000)
  const sharedMetric = random.pick(metricNames)
  const sharedUnit = plausibleReading(random, nowMs, sharedMetric).unit
  const pack: Array<{ [key: string]: Json }> = []
  for (let i = 0; i < count; i++) {
    const r = baseUnit ? plausibleReading(random, nowMs, sharedMetric, sharedUnit) : plausibleReading(random, nowMs)
    const record: { [key: string]: Json } = {}
    if (i === 0) {
      if (baseName !== '') record.bn = baseName
      if (timeStyle === 'base-time') record.bt = baseTime
      if (baseUnit) record.bu = r.unit
      if (baseValue !== 0) record.bv = baseValue
      if (random.chance(0.2)) record.bver = 10
      if (random.chance(0.7)) record.seq = random.int(1_000_000)
    }
    // RFC 8428 §4.5.1: the name may be a catalogue name or a LOINC code after the base name.
    record.n = random.chance(0.3) ? r.loinc : r.metric
    if (!baseUnit) record.u = r.unit
    record.v = Number((r.value - baseValue).toFixed(2))
    if (timeStyle === 'base-time') record.t = -random.int(60)
    else if (timeStyle === 'record-time') record.t = baseTime - random.int(60)
    else if (random.chance(0.7)) record.t = -random.int(600)
    pack.push(record)
  }
  return pack
}

const unicodeSamples = [
  '\u0000', '\u0001', '\u001f', '\u007f', '\u00a0', '\u200b', '\u200d', '\u202e', '\ufeff', '\ufffd',
  '😀', '👨‍👩‍👧', 'é', 'e\u0301', 'ß', 'İ', 'ｈｅａｒｔ＿ｒａｔｅ', 'ºC', '\u00b0C', '℃', 'µ', 'Ω', '漢字', 'עברית',
  '\ud83d', '\udc00' // lone surrogates: JSON.stringify escapes them (ES2019 well-formed stringify)
]

const prototypeKeys = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__']

/** Every word a payload can use, so mutations recombine real metrics, units, codes and labels. */
const vocabulary: string[] = [
  ...metricNames,
  ...metricNames.flatMap((m) => Object.keys(vitalsCatalogue[m].units)),
  ...metricNames.map((m) => vitalsCatalogue[m].loinc), '59408-5',
  'mood', 'Hz', 'K', '1', '%25', 'mm[Hg] ', 'HEART_RATE', 'heart-rate', 'urn:dev:mac:0024befffe804ff1:heart_rate',
  ...prototypeKeys
]

const fieldNames = [
  'metric', 'value', 'unit', 'ts', 'seq', 'readings',
  'bn', 'bt', 'bu', 'bv', 'bs', 'bver', 'n', 'u', 'v', 'vs', 'vb', 'vd', 's', 't', 'ut',
  'n_', 'x_', 'bver_', '', ' ', 'ü', 'a'.repeat(300), ...prototypeKeys
]

const weirdNumbers = [
  0, -1, 1, 0.5, -0.000001, 1e-7, 5e-324, 1e308, -1e308, 1.7976931348623157e308,
  2 ** 28 - 1, 2 ** 28, 2 ** 31, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 2 ** 63, 2 ** 64, -(2 ** 53),
  EARLIEST_READING_MS - 1, EARLIEST_READING_MS, 946684800, 4102444800, 4102444800000, 8.64e15, 8.64e15 + 1
]

function weirdString (random: Random): string {
  switch (random.int(5)) {
    case 0: return random.pick(vocabulary)
    case 1: return random.pick(unicodeSamples).repeat(random.between(1, 4))
    case 2: return random.pick(['x', '9', '"', '\\', '{']).repeat(random.pick([64, 256, 4097, 65_536]))
    case 3: return random.pick(['72', 'NaN', 'Infinity', '-Infinity', '1e309', '0x48', '', ' ', 'null', 'true', '2026-01-01T00:00:00Z'])
    default: return random.pick(vocabulary) + random.pick(unicodeSamples)
  }
}

function weirdValue (random: Random, nowMs: number): Json {
  switch (random.int(8)) {
    case 0: return null
    case 1: return random.chance(0.5)
    case 2: return random.pick(weirdNumbers)
    case 3: return weirdString(random)
    case 4: return random.pick<Json>([[], {}, [72], { value: 72 }, [null], [[]]])
    case 5: return nowMs + random.pick([-1, 1, 299_000, 300_001, 301_000, 86_400_000, -86_400_000 * 365 * 30])
    case 6: return boundaryValue(random)
    default: return random.pick(weirdNumbers) * random.pick([-1, 1, 1000, 0.001])
  }
}

/** A value at, or a hair outside, some metric's plausible range. */
function boundaryValue (random: Random): number {
  const entry = vitalsCatalogue[random.pick(metricNames)]
  const edge = random.chance(0.5) ? entry.min : entry.max
  return edge + random.pick([0, -1e-9, 1e-9, -0.5, 0.5, -1, 1])
}

function tweakNumber (random: Random, value: number, nowMs: number): Json {
  switch (random.int(7)) {
    case 0: return -value
    case 1: return value * random.pick([1000, 0.001, 1e6, 1e-6])
    case 2: return value + random.pick([0.5, 1e-9, -1e-9, 1, -1])
    case 3: return boundaryValue(random)
    case 4: return String(value)
    case 5: return nowMs + random.pick([299_000, 300_001, 600_000])
    default: return random.pick(weirdNumbers)
  }
}

function tweakString (random: Random, value: string): Json {
  switch (random.int(8)) {
    case 0: return random.pick(vocabulary)
    case 1: return value.toUpperCase()
    case 2: return random.chance(0.5) ? ` ${value}` : `${value} `
    case 3: {
      const at = random.int(value.length + 1)
      return value.slice(0, at) + random.pick(unicodeSamples) + value.slice(at)
    }
    case 4: return value.repeat(random.pick([2, 100, 5000]))
    case 5: return value.slice(0, random.int(value.length + 1))
    case 6: return Number.isNaN(Number(value)) ? weirdString(random) : Number(value)
    default: return weirdString(random)
  }
}

/** Every (container, key) in the document, the root's holder included, up to a bounded count. */
function slotsOf (holder: Container): Array<{ parent: Container, key: string | number }> {
  const slots: Array<{ parent: Container, key: string | number }> = []
  const visit = (node: Container, depth: number): void => {
    if (depth > 8 || slots.length > 4000) return
    const keys: Array<string | number> = Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node)
    for (const key of keys) {
      slots.push({ parent: node, key })
      const child = (node as Record<string | number, Json>)[key]
      if (child !== null && typeof child === 'object') visit(child, depth + 1)
    }
  }
  visit(holder, 0)
  return slots
}

/** Sets an own property, even one named `__proto__` (plain assignment would set the prototype). */
function defineField (target: { [key: string]: Json }, key: string, value: Json): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true })
}

const DEEP_MARKER = /"__fuzz_deep_(\d+)__"/g

// Op numbers of mutateStructure, repeated by weight: small edits often, costly shapes seldom.
const structureOps = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 6, 7, 8, 9]

/** One structural edit somewhere in the document: drop, duplicate, retype, widen, nest... */
function mutateStructure (random: Random, holder: { root: Json }, nowMs: number): string {
  const slots = slotsOf(holder)
  const { parent, key } = random.pick(slots)
  const current = (parent as Record<string | number, Json>)[key]!
  const set = (value: Json): void => {
    if (Array.isArray(parent)) parent[key as number] = value
    else defineField(parent, key as string, value)
  }
  switch (random.pick(structureOps)) {
    case 0:
      if (parent === holder) {
        set(null)
        return 'root→null'
      }
      if (Array.isArray(parent)) parent.splice(key as number, 1)
      else delete parent[key as string]
      return `drop ${String(key)}`
    case 1:
      if (Array.isArray(parent)) {
        parent.splice(key as number, 0, structuredCloneJson(current))
        return 'duplicate element'
      }
      defineField(parent, random.pick(fieldNames), structuredCloneJson(current))
      return 'copy field'
    case 2:
      set(weirdValue(random, nowMs))
      return `retype ${String(key).slice(0, 16)}`
    case 3:
      if (typeof current === 'number') {
        set(tweakNumber(random, current, nowMs))
        return 'tweak number'
      }
      if (typeof current === 'string') {
        set(tweakString(random, current))
        return 'tweak string'
      }
      set(weirdValue(random, nowMs))
      return 'retype'
    case 4: {
      const objects = slots.map((s) => (s.parent as Record<string | number, Json>)[s.key])
        .filter((v): v is { [key: string]: Json } => v !== null && typeof v === 'object' && !Array.isArray(v))
      if (objects.length === 0) {
        set({})
        return 'object'
      }
      const name = random.pick(fieldNames)
      defineField(random.pick(objects), name, random.chance(0.5) ? weirdValue(random, nowMs) : { metric: 'heart_rate', value: 72 })
      return `add field ${name.slice(0, 16)}`
    }
    case 5: {
      const arrays = slots.map((s) => (s.parent as Record<string | number, Json>)[s.key])
        .filter((v): v is Json[] => Array.isArray(v) && v.length > 0 && JSON.stringify(v[0]).length < 2048)
      if (arrays.length === 0) {
        set([])
        return 'array'
      }
      const target = random.pick(arrays)
      // Past 500 (maxItems) is rare on purpose: each such case costs the schema's error walk.
      const length = random.chance(0.95) ? random.pick([0, 1, 2, 499, 500]) : random.pick([501, 700])
      const template = target.slice()
      target.length = 0
      for (let i = 0; i < length; i++) target.push(structuredCloneJson(template[i % template.length]!))
      return `widen to ${length}`
    }
    case 6: {
      const depth = random.chance(0.95) ? random.pick([2, 16, 64, 1000]) : 100_000
      set(`__fuzz_deep_${depth}__`)
      return `nest ${depth}`
    }
    case 7:
      set(random.chance(0.5) ? [current] : { value: current })
      return 'wrap'
    case 8:
      set(random.chance(0.5) ? [] : {})
      return 'empty'
    default:
      set(random.pick(prototypeKeys))
      return 'prototype key as value'
  }
}

function structuredCloneJson (value: Json): Json {
  return JSON.parse(JSON.stringify(value)) as Json
}

const numberLiterals = [
  '1e999', '-1e999', '1E+308', '1e-400', '-0', '0.0', '00', '01', '0x10', 'NaN', 'Infinity', '-Infinity',
  '+1', '.5', '1.', '1e', '12345678901234567890123', '9007199254740993', '1_000', '٣'
]

const insertedFields = [
  '"__proto__":{"metric":"heart_rate","value":72,"unit":"/min"}', '"__proto__":null', '"constructor":{"prototype":{"polluted":true}}',
  '"seq":-1', '"seq":1.5', '"readings":[]', '"v":"72"', '"bn":"x"', '"ts":null', '"metric":"mood"', '"u":"%"', '"n_":1', '"bver":11'
]

/** One edit of the JSON text: odd number literals, duplicate or prototype keys, escapes, BOM... */
function mutateText (random: Random, text: string): { text: string, mutation: string } {
  switch (random.int(8)) {
    case 0: {
      const numbers = [...text.matchAll(/-?\d+(\.\d+)?([eE][+-]?\d+)?/g)]
      if (numbers.length === 0) break
      const m = random.pick(numbers)
      const literal = random.pick(numberLiterals)
      return { text: text.slice(0, m.index) + literal + text.slice(m.index + m[0].length), mutation: `number literal ${literal}` }
    }
    case 1: {
      const braces = [...text.matchAll(/\{/g)]
      if (braces.length === 0) break
      const at = random.pick(braces).index + 1
      const field = random.pick(insertedFields)
      const separator = text[at] === '}' ? '' : ','
      return { text: text.slice(0, at) + field + separator + text.slice(at), mutation: `insert ${field.slice(0, 24)}` }
    }
    case 2: {
      // An escaped letter is the same JSON string: "heart\u005frate" must decode like "heart_rate".
      const letters = [...text.matchAll(/[a-z_%/]/g)]
      if (letters.length === 0) break
      const m = random.pick(letters)
      const escaped = `\\u${m[0].charCodeAt(0).toString(16).padStart(4, '0')}`
      return { text: text.slice(0, m.index) + escaped + text.slice(m.index + 1), mutation: 'escape a character' }
    }
    case 3:
      return { text: '\ufeff' + text, mutation: 'BOM' }
    case 4: {
      const at = random.int(text.length + 1)
      return { text: text.slice(0, at) + random.pick([' ', '\n', '\t', '\r\n', '\u00a0', '\u2028', '/**/']) + text.slice(at), mutation: 'whitespace' }
    }
    case 5:
      return { text: text + random.pick([',', '}', ']', ' x', '{}', '\u0000', text]), mutation: 'trailing text' }
    case 6: {
      const quotes = [...text.matchAll(/"/g)]
      if (quotes.length === 0) break
      const at = random.pick(quotes).index
      return { text: text.slice(0, at) + '\'' + text.slice(at + 1), mutation: 'single quote' }
    }
    default:
      return { text: text.slice(0, random.int(text.length + 1)), mutation: 'truncate text' }
  }
  return { text: text + ' ', mutation: 'trailing space' }
}

export interface FuzzPayload {
  kind: PayloadKind
  payload: Buffer
  mutations: string[]
}

const MAX_PAYLOAD_BYTES = 512 * 1024

/**
 * A payload for `kind`'s topic: sometimes valid as generated, usually a valid document
 * mutated structurally, then maybe as text, then maybe as bytes.
 */
export function fuzzPayload (random: Random, kind: PayloadKind, nowMs: number): FuzzPayload {
  const mutations: string[] = []
  // Now and then the other format on this topic.
  const documentKind = random.chance(0.03) ? (kind === 'telemetry' ? 'senml' : 'telemetry') : kind
  if (documentKind !== kind) mutations.push(`${documentKind} document`)
  const holder: { root: Json } = { root: documentKind === 'telemetry' ? validTelemetry(random, nowMs) : validSenml(random, nowMs) }
  const mutate = random.chance(0.85)
  if (mutate && random.chance(0.8)) {
    for (let round = random.between(1, 3); round > 0; round--) mutations.push(mutateStructure(random, holder, nowMs))
  }
  let text = JSON.stringify(holder.root) ?? 'null'
  text = text.replace(DEEP_MARKER, (_, depth: string) => '['.repeat(Number(depth)) + '0' + ']'.repeat(Number(depth)))
  if (mutate && (mutations.length === 0 || random.chance(0.3))) {
    const edit = mutateText(random, text)
    text = edit.text
    mutations.push(edit.mutation)
  }
  let payload: Buffer = Buffer.from(text, 'utf8')
  if (mutate && random.chance(0.15)) {
    payload = mutateBytes(random, payload)
    mutations.push('bytes')
  }
  if (payload.length > MAX_PAYLOAD_BYTES) {
    payload = payload.subarray(0, MAX_PAYLOAD_BYTES)
    mutations.push('cut to 512 KiB')
  }
  return { kind, payload, mutations }
}

// ---------------------------------------------------------------------------------------------
// Oracles

export const rejectionReasons: ReadonlySet<string> = new Set<RejectionReason>([
  'payload_not_json', 'payload_schema', 'senml_invalid', 'unknown_metric', 'unit_unsupported',
  'value_out_of_range', 'timestamp_in_future', 'timestamp_invalid', 'device_unassigned', 'payload_too_large'
])

/** README: a device clock may run up to 5 minutes ahead of the server. */
export const MAX_CLOCK_AHEAD_MS = 5 * 60_000

/** Why a reading (decoded, or read back from the API with an ISO `ts`) breaks the catalogue's rules; empty when valid. */
export function readingProblems (reading: { metric: unknown, value: unknown, unit: unknown, ts: unknown }, nowMs: number): string[] {
  const problems: string[] = []
  const entry = typeof reading.metric === 'string' ? lookupMetric(reading.metric) : undefined
  if (entry === undefined) return [`unknown metric ${JSON.stringify(reading.metric)}`]
  if (reading.unit !== entry.unit) problems.push(`unit ${JSON.stringify(reading.unit)} is not ${entry.name}'s canonical ${entry.unit}`)
  if (typeof reading.value !== 'number' || !Number.isFinite(reading.value)) problems.push(`value ${String(reading.value)} is not a finite number`)
  else if (reading.value < entry.min || reading.value > entry.max) problems.push(`value ${reading.value} outside ${entry.min}–${entry.max}`)
  const ts = typeof reading.ts === 'string' ? Date.parse(reading.ts) : reading.ts
  if (typeof ts !== 'number' || !Number.isSafeInteger(ts)) problems.push(`ts ${String(reading.ts)} is not an integer time`)
  else if (ts < EARLIEST_READING_MS) problems.push(`ts ${ts} is before 2000-01-01`)
  else if (ts > nowMs + MAX_CLOCK_AHEAD_MS) problems.push(`ts ${ts} is ${ts - nowMs} ms ahead of now`)
  return problems
}

export type DecodeVerdict =
  | { outcome: 'accepted', seq: number | null, readings: DecodedPayload['readings'] }
  | { outcome: 'rejected', reason: RejectionReason }
  | { outcome: 'broken', problem: string }

/**
 * Runs a decoder and judges it: readings that all pass the catalogue's rules, or a
 * PayloadRejection with a known reason. Anything else (another error, a bad reading) is broken.
 */
export function judgeDecode (decode: () => DecodedPayload, nowMs: number): DecodeVerdict {
  let decoded: DecodedPayload
  try {
    decoded = decode()
  } catch (err) {
    if (err instanceof PayloadRejection && rejectionReasons.has(err.reason)) return { outcome: 'rejected', reason: err.reason }
    const error = err as Error
    return { outcome: 'broken', problem: `threw ${error?.name}: ${String(error?.message).slice(0, 200)}` }
  }
  if (decoded.seq !== null && !(Number.isSafeInteger(decoded.seq) && decoded.seq >= 0)) {
    return { outcome: 'broken', problem: `seq ${String(decoded.seq)} is not a non-negative integer` }
  }
  if (!Array.isArray(decoded.readings) || decoded.readings.length < 1 || decoded.readings.length > 500) {
    return { outcome: 'broken', problem: `${decoded.readings?.length} readings (1–500 allowed)` }
  }
  for (const [index, reading] of decoded.readings.entries()) {
    const problems = readingProblems(reading, nowMs)
    if (problems.length > 0) return { outcome: 'broken', problem: `reading ${index}: ${problems.join('; ')}` }
  }
  return { outcome: 'accepted', seq: decoded.seq, readings: decoded.readings }
}

/** A short printable view of a payload for a failure report (JSON-escaped, bounded). */
export function preview (payload: Buffer, max = 300): string {
  const text = JSON.stringify(payload.subarray(0, max).toString('utf8'))
  return payload.length > max ? `${text}… (${payload.length} bytes)` : text
}

// ---------------------------------------------------------------------------------------------
// MQTT frames (MQTT 3.1.1 §2.2: one header byte, a 1–4 byte remaining length, the body)

/** MQTT-2.2.3 variable byte integer, for any length up to 268,435,455. */
export function remainingLength (length: number): Buffer {
  const bytes: number[] = []
  do {
    let byte = length % 128
    length = Math.floor(length / 128)
    if (length > 0) byte |= 0x80
    bytes.push(byte)
  } while (length > 0)
  return Buffer.from(bytes)
}

export interface FrameScan {
  /** Complete frames. */
  frames: number
  /** Where the bytes end: between frames, or inside a frame's header, length or body. */
  end: 'boundary' | 'length' | 'body'
  /** Body bytes still owed when `end` is `body`. */
  missing: number
  /** A remaining length with a continuation bit on its 4th byte (MQTT-2.2.3 allows 4). */
  malformed: boolean
  /** The largest frame declared (header + length + body). */
  largest: number
}

/** Follows frame boundaries the way the broker's frame limit does (broker/frame-limit.ts). */
export function scanFrames (bytes: Buffer): FrameScan {
  const scan: FrameScan = { frames: 0, end: 'boundary', missing: 0, malformed: false, largest: 0 }
  let i = 0
  while (i < bytes.length) {
    i++ // fixed header byte
    let length = 0
    let multiplier = 1
    let lengthBytes = 0
    for (;;) {
      if (i >= bytes.length) return { ...scan, end: 'length' }
      const byte = bytes[i++]!
      length += (byte & 0x7f) * multiplier
      multiplier *= 128
      lengthBytes++
      if ((byte & 0x80) === 0) break
      if (lengthBytes === 4) return { ...scan, malformed: true, end: 'length' }
    }
    scan.largest = Math.max(scan.largest, 1 + lengthBytes + length)
    if (i + length > bytes.length) return { ...scan, end: 'body', missing: i + length - bytes.length }
    i += length
    scan.frames++
  }
  return scan
}

/**
 * Pads a byte stream so it ends between frames (a length still open is closed with 0, a short
 * body filled with zeros), so the broker parses every frame instead of waiting for more.
 * Null when the stream is malformed or would need more than `maxPadding` bytes.
 */
export function completeFrames (bytes: Buffer, maxPadding: number): Buffer | null {
  let out = bytes
  for (let guard = 0; guard < 8; guard++) {
    const scan = scanFrames(out)
    if (scan.malformed) return null
    if (scan.end === 'boundary') return out
    if (scan.end === 'length') out = Buffer.concat([out, Buffer.from([0])])
    else if (scan.missing > maxPadding || out.length + scan.missing - bytes.length > maxPadding) return null
    else out = Buffer.concat([out, Buffer.alloc(scan.missing)])
  }
  return null
}

const lyingLengths = [0, 1, 2, 127, 128, 16_383, 16_384, 65_535, 2_097_151, 262_143, 262_144, 262_145, 268_435_455]

/**
 * One mutation of a well-formed packet: bit flips, random flags, type or QoS bits, truncation
 * (with the length fixed or left lying), a lying or malformed remaining length, inserted bytes,
 * garbage or a duplicate appended.
 */
export function mutatePacket (random: Random, packet: Buffer): { bytes: Buffer, mutation: string } {
  let lengthBytes = 1
  while (lengthBytes < 4 && (packet[lengthBytes]! & 0x80) !== 0) lengthBytes++
  const header = packet[0]!
  const body = packet.subarray(1 + lengthBytes)
  const frame = (first: number, content: Buffer, declared = content.length): Buffer =>
    Buffer.concat([Buffer.from([first]), remainingLength(declared), content])
  switch (random.int(12)) {
    case 0: {
      const flipped = Buffer.from(body)
      for (let n = random.between(1, 6); n > 0 && flipped.length > 0; n--) flipped[random.int(flipped.length)]! ^= 1 << random.int(8)
      return { bytes: frame(header, flipped), mutation: 'flip body bits' }
    }
    case 1:
      return { bytes: frame((header & 0xf0) | random.int(16), body), mutation: 'random flags' }
    case 2:
      return { bytes: frame((random.int(16) << 4) | (header & 0x0f), body), mutation: 'random type' }
    case 3:
      return { bytes: frame((header & 0xf9) | (random.int(4) << 1), body), mutation: 'random QoS bits' }
    case 4:
      return { bytes: frame(header, body.subarray(0, random.int(body.length + 1))), mutation: 'truncate body, length fixed' }
    case 5: {
      const whole = frame(header, body)
      return { bytes: whole.subarray(0, random.int(whole.length)), mutation: 'truncate, length lies' }
    }
    case 6: {
      const declared = random.chance(0.5) ? random.pick(lyingLengths) : Math.max(0, body.length + random.between(-8, 8))
      return { bytes: frame(header, body, declared), mutation: `length lies (${declared} for ${body.length})` }
    }
    case 7: {
      const length = random.chance(0.5)
        ? Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]) // five length bytes
        : Buffer.from([0x80 | (body.length & 0x7f), 0x80, 0x80, 0x00]) // overlong encoding of a small length
      return { bytes: Buffer.concat([Buffer.from([header]), length.subarray(0, random.chance(0.5) ? length.length : 4), body]), mutation: 'malformed length' }
    }
    case 8: {
      const at = random.int(body.length + 1)
      return { bytes: frame(header, Buffer.concat([body.subarray(0, at), random.bytes(random.between(1, 32)), body.subarray(at)])), mutation: 'insert bytes' }
    }
    case 9:
      return { bytes: frame(header, mutateBytes(random, body)), mutation: 'mutate body bytes' }
    case 10:
      return { bytes: Buffer.concat([packet, random.bytes(random.between(1, 64))]), mutation: 'append garbage' }
    default:
      return { bytes: Buffer.concat([packet, packet]), mutation: 'send twice' }
  }
}
