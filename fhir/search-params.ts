// FHIR R4 search parameter syntax (R4 §3.1.1.4 search), parsed into what Vigil's stores take.
// Pure; every refusal is a VIGIL_ERR_VALIDATION naming the parameter, never echoing its value.
import { VigilError } from '../errors/catalogue.ts'

export function invalidParameter (name: string, message: string): VigilError {
  return new VigilError('VIGIL_ERR_VALIDATION', `search parameter ${name} ${message}`, [{ path: `querystring/${name}`, message }])
}

/** Query parameters as lists (a repeated parameter is ANDed, R4 §3.1.1.4.1). */
export type SearchParameters = ReadonlyMap<string, readonly string[]>

export function searchParameters (query: unknown): SearchParameters {
  const out = new Map<string, string[]>()
  if (query === null || typeof query !== 'object') return out
  for (const [name, value] of Object.entries(query as Record<string, unknown>)) {
    const values = Array.isArray(value) ? value : [value]
    out.set(name, values.map((v) => String(v)))
  }
  return out
}

/** Refuses parameters this search does not implement (R4 §3.1.1.4.2: ignoring one would return more than asked for). */
export function refuseUnknown (params: SearchParameters, known: readonly string[]): void {
  for (const name of params.keys()) {
    if (!known.includes(name)) throw invalidParameter(name, `is not supported here (supported: ${known.join(', ')})`)
  }
}

/** The single value of a parameter given at most once; undefined when absent. */
export function single (params: SearchParameters, name: string): string | undefined {
  const values = params.get(name)
  if (values === undefined) return undefined
  if (values.length !== 1) throw invalidParameter(name, 'may be given only once')
  return values[0]
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** A reference parameter to a Patient: `id`, `Patient/id` or an absolute `…/Patient/id` (R4 §3.1.1.4.12). */
export function patientIdOf (value: string, name: string): string {
  const m = /^(?:.*\/)?(?:Patient\/)?([^/]+)$/.exec(value)
  const id = m?.[1]
  if (id === undefined || !UUID.test(id) || (value.includes('/') && !/(^|\/)Patient\/[^/]+$/.test(value))) {
    throw invalidParameter(name, 'must be a Patient id or Patient/{id}')
  }
  return id.toLowerCase()
}

export interface Token { system: string | undefined, code: string }

/** A token (R4 §3.1.1.4.10): `code`, `system|code` or `|code` (no system); comma-separated values are ORed. */
export function tokensOf (value: string, name: string): Token[] {
  return value.split(',').map((part) => {
    const bar = part.indexOf('|')
    const system = bar === -1 ? undefined : part.slice(0, bar)
    const code = bar === -1 ? part : part.slice(bar + 1)
    if (code === '' || code.length > 128 || (system !== undefined && system.length > 256)) throw invalidParameter(name, 'must be code or system|code')
    return { system: system === '' ? undefined : system, code }
  })
}

// R4 §2.24.0.1 dateTime: YYYY, YYYY-MM, YYYY-MM-DD or a full time with a zone (a zone is
// required once hours are given; R4 says the server's zone applies otherwise: Vigil refuses).
const DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?)?)?$/

/** The half-open interval [start, end) in ms that a date value of its precision covers (R4 §3.1.1.4.6). */
export function dateRange (value: string, name: string): { start: number, end: number } {
  const m = DATE.exec(value)
  if (m === null) throw invalidParameter(name, 'must be YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.sss]] with Z or an offset')
  const [, y, mo, d, h, mi, s, frac, zone] = m
  const year = Number(y)
  const month = mo === undefined ? 1 : Number(mo)
  const day = d === undefined ? 1 : Number(d)
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate()
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth) throw invalidParameter(name, 'is not a calendar date')
  if (h !== undefined && (Number(h) > 23 || Number(mi) > 59 || (s !== undefined && Number(s) > 59))) throw invalidParameter(name, 'is not a time of day')
  if (mo === undefined) return { start: Date.UTC(year, 0, 1), end: Date.UTC(year + 1, 0, 1) }
  if (d === undefined) return { start: Date.UTC(year, month - 1, 1), end: Date.UTC(year, month, 1) }
  if (h === undefined) return { start: Date.UTC(year, month - 1, day), end: Date.UTC(year, month - 1, day + 1) }
  const start = Date.parse(`${y}-${mo}-${d}T${h}:${mi}:${s ?? '00'}${frac === undefined ? '' : frac.slice(0, 4)}${zone}`)
  if (Number.isNaN(start)) throw invalidParameter(name, 'is not a date-time')
  const step = frac !== undefined ? 1 : s !== undefined ? 1000 : 60_000
  return { start, end: start + step }
}

/**
 * `date` parameters (each ANDed) as one interval [from, to) in ms: prefixes eq (default), ge,
 * gt, le, lt, with the value's precision (ge2025-01-01 from its first instant; lt2025-02 before
 * February; gt2025-01-01 from 2025-01-02). ne, sa, eb and ap are refused.
 */
export function dateInterval (values: readonly string[], name: string): { from?: number, to?: number } {
  let from: number | undefined
  let to: number | undefined
  const atLeast = (v: number) => { from = from === undefined ? v : Math.max(from, v) }
  const below = (v: number) => { to = to === undefined ? v : Math.min(to, v) }
  for (const value of values) {
    const m = /^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$/.exec(value)!
    const prefix = m[1] ?? 'eq'
    const { start, end } = dateRange(m[2]!, name)
    if (prefix === 'eq') { atLeast(start); below(end) } else if (prefix === 'ge') atLeast(start)
    else if (prefix === 'gt') atLeast(end)
    else if (prefix === 'lt') below(start)
    else if (prefix === 'le') below(end)
    else throw invalidParameter(name, `prefix ${prefix} is not supported (eq, ge, gt, le, lt are)`)
  }
  return { from, to }
}

/** `_count` (R4 §3.1.1.5.7): 1 to max; default when absent. */
export function countOf (params: SearchParameters, defaultCount: number, max: number): number {
  const value = single(params, '_count')
  if (value === undefined) return defaultCount
  if (!/^[0-9]{1,7}$/.test(value) || Number(value) < 1) throw invalidParameter('_count', `must be an integer from 1 to ${max}`)
  return Math.min(Number(value), max)
}
