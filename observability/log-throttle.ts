import type { Logger } from 'pino'

type Level = 'error' | 'warn' | 'info'

export interface LogThrottle {
  /**
   * Logs `msg` for `key` (e.g. a refusal reason) at most once per interval. Repeats inside the
   * interval are only counted; when it ends, one line with `repeated: n` (the number of
   * lines held back, `fields` of the last one) reports them.
   */
  log (level: Level, key: string, fields: Record<string, unknown>, msg: string): void
  /** Reports what is held back now and stops the timers. */
  close (): void
}

interface Window {
  timer: NodeJS.Timeout
  repeated: number
  last: { level: Level, fields: Record<string, unknown>, msg: string }
}

/**
 * Repeated errors with one cause (a full disk refusing every publish, a store refusing every
 * write) would otherwise write a line per event onto the same disk: one line per key per
 * interval, with a count, says the same.
 */
export function createLogThrottle (log: Logger, intervalMs = 10_000): LogThrottle {
  const windows = new Map<string, Window>()

  function end (key: string): void {
    const window = windows.get(key)
    windows.delete(key)
    if (window === undefined || window.repeated === 0) return
    const { level, fields, msg } = window.last
    log[level]({ ...fields, repeated: window.repeated, intervalMs }, `${msg} (repeated)`)
  }

  return {
    log (level, key, fields, msg) {
      const window = windows.get(key)
      if (window !== undefined) {
        window.repeated++
        window.last = { level, fields, msg }
        return
      }
      log[level](fields, msg)
      const timer = setTimeout(() => end(key), intervalMs)
      timer.unref()
      windows.set(key, { timer, repeated: 0, last: { level, fields, msg } })
    },
    close () {
      for (const [key, window] of [...windows]) {
        clearTimeout(window.timer)
        end(key)
      }
    }
  }
}
