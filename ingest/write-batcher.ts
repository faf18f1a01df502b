import type { StoredReading } from '../readings/reading.ts'

interface Offer { readings: StoredReading[], resolve: () => void, reject: (err: Error) => void }

/**
 * Group commit: readings offered while a write is in flight are written together in the next
 * one, and every offer settles when the write holding it does. Under load this turns N
 * single-row transactions into a few large ones without delaying a lone reading.
 * An offer is never split across writes, so a device's message is stored whole or not at all.
 */
export function createWriteBatcher (write: (readings: StoredReading[]) => Promise<void>, maxBatch = 5000) {
  let queue: Offer[] = []
  let inFlight: Promise<void> | null = null

  function drain (): void {
    if (inFlight !== null || queue.length === 0) return
    let count = 0
    let taken = 0
    while (taken < queue.length && (taken === 0 || count + queue[taken]!.readings.length <= maxBatch)) {
      count += queue[taken]!.readings.length
      taken++
    }
    const batch = queue.slice(0, taken)
    queue = queue.slice(taken)
    inFlight = write(batch.flatMap((o) => o.readings)).then(
      () => { for (const o of batch) o.resolve() },
      (err: Error) => { for (const o of batch) o.reject(err) }
    ).finally(() => {
      inFlight = null
      drain()
    })
  }

  return {
    write (readings: StoredReading[]): Promise<void> {
      if (readings.length === 0) return Promise.resolve()
      return new Promise<void>((resolve, reject) => {
        queue.push({ readings, resolve, reject })
        drain()
      })
    },
    /** Resolves when everything offered so far has settled. */
    async flush (): Promise<void> {
      while (inFlight !== null) await inFlight.catch(() => {})
    }
  }
}
