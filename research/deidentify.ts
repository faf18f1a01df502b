import { createHmac } from 'node:crypto'

// The HIPAA Safe Harbor transformations, as pure functions of the export's key (research/README.md).
// The key is random per export and kept server-side, so a subject's pseudonym and date shift
// differ between two exports of the same cohort and cannot be linked without both keys.

const DAY_MS = 86_400_000
/** Dates move back by 1–3 years (whole days + seconds), the same offset for all of one subject's dates. */
const MIN_SHIFT_DAYS = 365
const SHIFT_SPAN_MS = 730 * DAY_MS

function hmac (key: Buffer, purpose: string, value: string): Buffer {
  return createHmac('sha256', key).update(`${purpose}\0${value}`).digest()
}

/** The subject's pseudonym in this export: 16 hex digits of HMAC(key, patient id). */
export function pseudonym (key: Buffer, patientId: string): string {
  return `s-${hmac(key, 'subject', patientId).subarray(0, 8).toString('hex')}`
}

/** The subject's date shift in ms (negative: dates move into the past), whole seconds. */
export function dateShiftMs (key: Buffer, patientId: string): number {
  const r = hmac(key, 'date-shift', patientId).readUIntBE(0, 6) / 2 ** 48
  return -(MIN_SHIFT_DAYS * DAY_MS + Math.floor(r * SHIFT_SPAN_MS / 1000) * 1000)
}

export function shiftDate (at: Date | string, shiftMs: number): string {
  return new Date(new Date(at).getTime() + shiftMs).toISOString()
}

/** Age in whole years on `on`. */
export function ageOn (dateOfBirth: string, on: Date): number {
  const [y, m, d] = dateOfBirth.split('-').map(Number) as [number, number, number]
  let age = on.getUTCFullYear() - y
  if (on.getUTCMonth() + 1 < m || (on.getUTCMonth() + 1 === m && on.getUTCDate() < d)) age -= 1
  return age
}

/** Five-year age groups; every age over 89 is one group (Safe Harbor §164.514(b)(2)(i)(C)). */
export function ageGroup (age: number | null): string | null {
  if (age === null || !Number.isFinite(age) || age < 0) return null
  if (age >= 90) return '90+'
  const low = Math.floor(age / 5) * 5
  return `${low}-${low + 4}`
}

/** A subject's quasi-identifiers as exported (before suppression). */
export interface QuasiIdentifiers {
  ageGroup: string | null
  sex: string | null
}

export interface Suppression {
  /** Distinct (ageGroup, sex) cells with fewer than k subjects. */
  suppressedCells: number
  /** Subjects whose quasi-identifiers were blanked. */
  suppressedSubjects: number
  k: number
}

/**
 * k-anonymity on the quasi-identifiers: a subject whose (ageGroup, sex) cell holds fewer than `k`
 * subjects of the cohort gets both set to null. Returns the suppressed copy and the counts.
 */
export function suppressSmallCells<T extends QuasiIdentifiers> (subjects: readonly T[], k: number): { subjects: T[], suppression: Suppression } {
  const cell = (s: QuasiIdentifiers): string => `${s.ageGroup ?? '?'}|${s.sex ?? '?'}`
  const sizes = new Map<string, number>()
  for (const s of subjects) sizes.set(cell(s), (sizes.get(cell(s)) ?? 0) + 1)
  const small = new Set([...sizes].filter(([, n]) => n < k).map(([c]) => c))
  let suppressedSubjects = 0
  const out = subjects.map((s) => {
    if (!small.has(cell(s))) return s
    suppressedSubjects++
    return { ...s, ageGroup: null, sex: null }
  })
  return { subjects: out, suppression: { suppressedCells: small.size, suppressedSubjects, k } }
}

/** What the manifest lists: every transformation applied, in words and by field. */
export const transformations = [
  { field: 'patient id, name, record fields (address, contacts, insurance, medical card, billing, family, medications, allergies, history)', action: 'removed', basis: 'Safe Harbor (A)–(R): names, addresses, numbers, account and record identifiers' },
  { field: 'subject', action: 'pseudonym: HMAC-SHA256 of the patient id under a random per-export key (kept server-side, encrypted); differs between exports' },
  { field: 'all dates and times', action: 'shifted by a per-subject offset of 365–1095 days (whole seconds), the same for all of a subject\'s dates: intervals are preserved, calendar dates are not' },
  { field: 'age', action: 'from the date of birth at the start of the period, in five-year groups; 90 and over grouped as "90+"; the date of birth is not exported' },
  { field: 'sex', action: 'kept as recorded (medical history gender), subject to k-suppression' },
  { field: 'ageGroup, sex', action: 'k-anonymity: a cell (ageGroup, sex) with fewer than k subjects is suppressed (both null); counts in "suppression"' },
  { field: 'device id, MAC, name, firmware, software versions, serials', action: 'removed' },
  { field: 'free text: alert summaries and details, comments, voice notes and transcripts, rejection payloads', action: 'removed (never read)' },
  { field: 'alert ids, actors, assignees, notification targets', action: 'removed; an alert is numbered within the export' },
  { field: 'reading values, units, LOINC codes, metric names, alert rule ids, kinds, severities, event types, NEWS2 totals', action: 'kept' }
] as const
