/** A clock of Dates the test moves by hand: job leases and backoff without sleeping. */
export function manualDateClock (start = Date.parse('2026-01-01T00:00:00Z')) {
  let ms = start
  return { now: () => new Date(ms), advance: (by: number) => { ms += by } }
}
