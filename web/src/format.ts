// Labels for catalogue names and times. Colour is never the only signal: every severity and
// band also reads as text.

export const metricLabels: Record<string, { short: string, long: string }> = {
  heart_rate: { short: 'HR', long: 'Heart rate' },
  resp_rate: { short: 'RR', long: 'Respiratory rate' },
  spo2: { short: 'SpO₂', long: 'Oxygen saturation' },
  body_temp: { short: 'Temp', long: 'Body temperature' },
  bp_systolic: { short: 'Sys', long: 'Systolic blood pressure' },
  bp_diastolic: { short: 'Dia', long: 'Diastolic blood pressure' },
  body_weight: { short: 'Wt', long: 'Body weight' },
  glucose: { short: 'Glu', long: 'Glucose' },
  o2_supplemental: { short: 'O₂', long: 'Supplemental oxygen' },
  consciousness: { short: 'ACVPU', long: 'Consciousness (ACVPU)' },
  news2_score: { short: 'NEWS2', long: 'NEWS2 score' }
}

export function metricShort (metric: string): string {
  return metricLabels[metric]?.short ?? metric
}

export function metricLong (metric: string): string {
  return metricLabels[metric]?.long ?? metric.replace(/_/g, ' ')
}

export function unitLabel (unit: string): string {
  return ({ Cel: '°C', 'mm[Hg]': 'mmHg', '1': '', '{score}': '' } as Record<string, string>)[unit] ?? unit
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
