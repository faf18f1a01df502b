// How urgent a worklist row is: one pure function, used by the server to sort GET /v1/worklist
// and by the page to re-sort after a live update, so both always agree.

export const severityRank = { critical: 4, high: 3, medium: 2, low: 1 } as const
export type Severity = keyof typeof severityRank

export interface UrgencyFacts {
  /** The most severe alert still open (not acknowledged), if any. */
  openSeverity: Severity | null
  /** The most severe acknowledged (not resolved) alert, if any. */
  acknowledgedSeverity: Severity | null
  news2Total: number | null
  /** Tie-break: the name, compared case-insensitively. */
  name: string
}

/**
 * Negative when `a` is more urgent. Unacknowledged alerts by severity first (someone must act),
 * then NEWS2 total (RCP 2017: the aggregate score drives the clinical response), then
 * acknowledged alerts, then the name.
 */
// One collator for every comparison: localeCompare with options builds a new one per call,
// which made sorting 500 rows cost more than rendering them.
const byName = new Intl.Collator(undefined, { sensitivity: 'base' })

export function compareUrgency (a: UrgencyFacts, b: UrgencyFacts): number {
  const rank = (s: Severity | null): number => (s === null ? 0 : severityRank[s])
  return rank(b.openSeverity) - rank(a.openSeverity) ||
    (b.news2Total ?? -1) - (a.news2Total ?? -1) ||
    rank(b.acknowledgedSeverity) - rank(a.acknowledgedSeverity) ||
    byName.compare(a.name, b.name)
}

/** NEWS2 clinical risk from the total alone (RCP 2017 chart 2; a single red score is not seen here). */
export function news2BandOf (total: number): 'low' | 'medium' | 'high' {
  return total >= 7 ? 'high' : total >= 5 ? 'medium' : 'low'
}
