import { setTimeout as sleep } from 'node:timers/promises'

/**
 * The one way tests wait. Every wait is bounded (30 s by default, far under tap's 240 s file
 * timeout) and fails with what it waited for and the last value it saw, so a broken test
 * fails fast with a reason instead of hanging until tap kills the file.
 */
export const WAIT_TIMEOUT_MS = 30_000

export interface WaitOptions {
  /** Give up after this long (default 30 s). */
  timeoutMs?: number
  /** Poll interval (default 25 ms). */
  everyMs?: number
}

type Options = WaitOptions | number

function options (o: Options | undefined): Required<WaitOptions> {
  const given = typeof o === 'number' ? { timeoutMs: o } : o ?? {}
  return { timeoutMs: given.timeoutMs ?? WAIT_TIMEOUT_MS, everyMs: given.everyMs ?? 25 }
}

/** A value shown in a failure message: short, and never `[object Object]`. */
export function show (value: unknown): string {
  let text: string
  if (value instanceof Error) text = `${value.name}: ${value.message}`
  else if (typeof value === 'string') text = JSON.stringify(value)
  else {
    try {
      text = JSON.stringify(value) ?? String(value)
    } catch {
      text = String(value)
    }
  }
  return text.length > 300 ? `${text.slice(0, 300)}…` : text
}

/**
 * Polls `probe` until `accept(value)` holds and returns that value; fails after the timeout
 * with `what` and the last value (or error) the probe gave. A probe that throws is retried.
 */
export async function waitForValue<T> (what: string, probe: () => Promise<T> | T, accept: (value: T) => boolean, o?: Options): Promise<T> {
  const { timeoutMs, everyMs } = options(o)
  const deadline = Date.now() + timeoutMs
  let last: unknown = '(never probed)'
  for (;;) {
    try {
      const value = await probe()
      if (accept(value)) return value
      last = value
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last seen: ${show(last)})`)
    await sleep(everyMs)
  }
}

/**
 * Polls `check` until it returns something other than undefined, null or false, and returns
 * it; fails after the timeout naming `what` and the last value seen.
 */
export async function waitFor<T> (what: string, check: () => Promise<T | undefined | null | false> | T | undefined | null | false, o?: Options): Promise<T> {
  return await waitForValue(what, check, (v) => v !== undefined && v !== null && v !== false, o) as T
}

/** Awaits `promise`, or fails after the timeout naming `what`. */
export async function within<T> (what: string, promise: Promise<T>, o?: Options): Promise<T> {
  const { timeoutMs } = options(o)
  const timer = new AbortController()
  try {
    return await Promise.race([
      promise,
      sleep(timeoutMs, undefined, { signal: timer.signal }).then(() => { throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`) })
    ])
  } finally {
    timer.abort()
  }
}

/** What nextEvent needs of an emitter (Node's, mqtt's, ws's). */
interface Emitter {
  once (event: string, listener: (...args: any[]) => void): unknown
  off (event: string, listener: (...args: any[]) => void): unknown
}

/** The next `event` from `emitter` (its arguments), or a failure after the timeout naming `what`. */
export async function nextEvent (emitter: Emitter, event: string, what: string, o?: Options): Promise<unknown[]> {
  let listener: ((...args: unknown[]) => void) | undefined
  const fired = new Promise<unknown[]>((resolve) => {
    listener = (...args) => resolve(args)
    emitter.once(event, listener)
  })
  try {
    return await within(what, fired, o)
  } finally {
    emitter.off(event, listener!)
  }
}
