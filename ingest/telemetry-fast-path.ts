/** What the fast path returns: the document JSON.parse would give, already known to pass the telemetry schema. */
export interface CommonTelemetry {
  seq?: number
  readings: Array<{ metric: string, value: number, unit: string, ts: number }>
}

// Byte values (RFC 8259 §2, §6, §7).
const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const COLON = 0x3a
const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d
const OPEN_BRACKET = 0x5b
const CLOSE_BRACKET = 0x5d
const MINUS = 0x2d
const DOT = 0x2e
const ZERO = 0x30
const NINE = 0x39

/** The keys the shape has, each with its opening quote. */
const KEYS = ['seq', 'readings', 'metric', 'value', 'unit', 'ts'].map((name) => ({ name, bytes: Buffer.from(`"${name}`, 'latin1') }))
/** Exact powers of ten as doubles (10^0 … 10^22 are exact in binary64). */
const POW10 = Array.from({ length: 23 }, (_, i) => 10 ** i)
/** Significant digits below which an integer mantissa is exact in a double (< 2^53). */
const MAX_DIGITS = 15

/**
 * Reads the common telemetry shape straight from the bytes: `{"seq":n,"readings":[{"metric":
 * "…","value":v,"unit":"…","ts":t}, …]}`, keys in any order, JSON whitespace anywhere. It returns
 * a document only when it is certain JSON.parse would give the same one and the schema would
 * pass it; for anything else (escapes or non-ASCII in strings, exponents, more than 15 digits,
 * duplicate or unknown keys, a length limit reached, a BOM, bad JSON) it returns null and the
 * caller takes the schema path, which accepts or refuses it and says why. So it can only ever
 * be faster, never accept or refuse differently (test/ingest/telemetry-fast-path.test.ts).
 */
export function parseCommonTelemetry (payload: Buffer, maxItems: number): CommonTelemetry | null {
  return new Parser(payload, maxItems).document()
}

class Parser {
  i = 0
  constructor (private readonly b: Buffer, private readonly maxItems: number) {}

  document (): CommonTelemetry | null {
    this.space()
    if (!this.take(OPEN_BRACE)) return null
    let seq: number | undefined
    let readings: CommonTelemetry['readings'] | undefined
    this.space()
    if (this.b[this.i] === CLOSE_BRACE) return null
    for (;;) {
      const key = this.key()
      if (key === 'seq' && seq === undefined) {
        const n = this.number(true)
        if (n === null || n < 0) return null
        seq = n
      } else if (key === 'readings' && readings === undefined) {
        const list = this.readings()
        if (list === null) return null
        readings = list
      } else {
        return null
      }
      this.space()
      if (this.take(COMMA)) { this.space(); continue }
      if (!this.take(CLOSE_BRACE)) return null
      break
    }
    this.space()
    if (this.i !== this.b.length || readings === undefined) return null
    return seq === undefined ? { readings } : { seq, readings }
  }

  readings (): CommonTelemetry['readings'] | null {
    if (!this.take(OPEN_BRACKET)) return null
    const list: CommonTelemetry['readings'] = []
    this.space()
    if (this.b[this.i] === CLOSE_BRACKET) return null // minItems 1: the schema path says so
    for (;;) {
      const reading = this.reading()
      if (reading === null) return null
      list.push(reading)
      if (list.length > this.maxItems) return null
      this.space()
      if (this.take(COMMA)) { this.space(); continue }
      if (!this.take(CLOSE_BRACKET)) return null
      return list
    }
  }

  reading (): CommonTelemetry['readings'][number] | null {
    if (!this.take(OPEN_BRACE)) return null
    let metric: string | null = null
    let value: number | null = null
    let unit: string | null = null
    let ts: number | null = null
    this.space()
    for (;;) {
      const key = this.key()
      if (key === 'metric' && metric === null) {
        metric = this.string(64)
        if (metric === null) return null
      } else if (key === 'value' && value === null) {
        value = this.number(false)
        if (value === null) return null
      } else if (key === 'unit' && unit === null) {
        unit = this.string(32)
        if (unit === null) return null
      } else if (key === 'ts' && ts === null) {
        ts = this.number(true)
        if (ts === null) return null
      } else {
        return null
      }
      this.space()
      if (this.take(COMMA)) { this.space(); continue }
      if (!this.take(CLOSE_BRACE)) return null
      break
    }
    if (metric === null || value === null || unit === null || ts === null) return null
    return { metric, value, unit, ts }
  }

  /** `"key"` then `:`, for the six keys of the shape (compared as bytes); null for any other. */
  key (): string | null {
    const b = this.b
    const i = this.i
    let key: string | null = null
    let length = 0
    for (const candidate of KEYS) {
      const bytes = candidate.bytes
      if (b[i + bytes.length] !== QUOTE) continue
      let j = 0
      while (j < bytes.length && b[i + j] === bytes[j]) j++
      if (j === bytes.length) { key = candidate.name; length = bytes.length + 1; break }
    }
    if (key === null) return null
    this.i += length
    this.space()
    if (!this.take(COLON)) return null
    this.space()
    return key
  }

  /** A string of 1…maxLength printable ASCII characters with no escape, or null. */
  string (maxLength: number): string | null {
    const b = this.b
    if (b[this.i] !== QUOTE) return null
    const start = ++this.i
    for (;;) {
      const c = b[this.i]
      if (c === undefined) return null
      if (c === QUOTE) break
      // Control characters are not JSON; escapes and non-ASCII are the schema path's.
      if (c < 0x20 || c > 0x7e || c === BACKSLASH) return null
      this.i++
    }
    const length = this.i - start
    this.i++
    if (length === 0 || length > maxLength) return null
    return b.toString('latin1', start, start + length)
  }

  /**
   * `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 15 digits in all, computed exactly: an integer
   * mantissa below 2^53 divided by an exact power of ten is one correctly rounded operation, the
   * same double JSON.parse gives (Clinger's fast path). Integers only when `integer` is set.
   */
  number (integer: boolean): number | null {
    const b = this.b
    let negative = false
    if (b[this.i] === MINUS) { negative = true; this.i++ }
    let c = b[this.i]
    if (c === undefined || c < ZERO || c > NINE) return null
    let mantissa = 0
    let digits = 0
    if (c === ZERO) {
      this.i++
      c = b[this.i]
      if (c !== undefined && c >= ZERO && c <= NINE) return null // a leading zero is not JSON
    } else {
      while (c !== undefined && c >= ZERO && c <= NINE) {
        mantissa = mantissa * 10 + (c - ZERO)
        digits++
        c = b[++this.i]
      }
    }
    let fraction = 0
    if (c === DOT) {
      if (integer) return null
      c = b[++this.i]
      while (c !== undefined && c >= ZERO && c <= NINE) {
        mantissa = mantissa * 10 + (c - ZERO)
        digits++
        fraction++
        c = b[++this.i]
      }
      if (fraction === 0) return null
    }
    // Exponents, and more digits than a double holds exactly, are the schema path's.
    if (c === 0x65 || c === 0x45 || digits > MAX_DIGITS) return null
    if (integer && negative) return null
    const magnitude = fraction === 0 ? mantissa : mantissa / POW10[fraction]!
    return negative ? -magnitude : magnitude
  }

  space (): void {
    const b = this.b
    for (;;) {
      const c = b[this.i]
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return
      this.i++
    }
  }

  take (byte: number): boolean {
    if (this.b[this.i] !== byte) return false
    this.i++
    return true
  }
}
