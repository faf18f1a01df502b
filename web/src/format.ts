// Labels for catalogue names and times. Colour is never the only signal: every severity and
// band also reads as text.

// Metric names come from the API's one catalogue (GET /v1/vitals), loaded once after sign-in;
// until then (or for a metric it does not know) the catalogue name stands in.
interface MetricLabel { label: string, abbreviation: string, unitSymbol: string }
const labels = new Map<string, MetricLabel>()
const unitSymbols = new Map<string, string>()

export function setMetricLabels (items: Array<MetricLabel & { metric: string, unit: string }>): void {
  for (const item of items) {
    labels.set(item.metric, item)
    unitSymbols.set(item.unit, item.unitSymbol)
  }
}

export function metricShort (metric: string): string {
  return labels.get(metric)?.abbreviation ?? metric
}

export function metricLong (metric: string): string {
  return labels.get(metric)?.label ?? metric.replace(/_/g, ' ')
}

export function unitLabel (unit: string): string {
  return unitSymbols.get(unit) ?? unit
}

/** "just now", "4 min ago", "3 h ago", "2 d ago". */
export function age (iso: string | null, now = Date.now()): string {
  if (iso === null) return 'never'
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  if (s < 45) return 'just now'
  if (s < 3600) return `${Math.round(s / 60)} min ago`
  if (s < 86_400) return `${Math.round(s / 3600)} h ago`
  return `${Math.round(s / 86_400)} d ago`
}

export function clock (iso: string): string {
  return new Date(iso).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' })
}

export function trendOf (total: number, previous: number | null): { arrow: string, words: string } {
  if (previous === null || previous === total) return { arrow: '→', words: previous === null ? 'no earlier score' : 'steady' }
  return total > previous ? { arrow: '↑', words: `rising from ${previous}` } : { arrow: '↓', words: `falling from ${previous}` }
}
