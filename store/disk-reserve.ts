import fs from 'node:fs/promises'
import type { Logger } from 'pino'
import { defaults } from '../config/schema/defaults.ts'

const MB = 1024 * 1024

/**
 * PGlite (like Postgres) creates its write-ahead log in 16 MB segments. The default reserve
 * (VIGIL_DISK_RESERVE_MB in config/schema/defaults.ts) is two of them (the one being filled and
 * the next, which Postgres creates ahead) plus room for the spool's fsync'd records, rejections
 * and audit rows written while writes are refused.
 */
export const WAL_SEGMENT_BYTES = 16 * MB
export const DEFAULT_DISK_RESERVE_BYTES = defaults.VIGIL_DISK_RESERVE_MB * MB

const CHECK_INTERVAL_MS = 1000

export interface DiskReserve {
  /** True while free space in the data directory is below the reserve. */
  low (): boolean
  /** Free bytes (for unprivileged users) at the last check. */
  freeBytes (): number
  readonly reserveBytes: number
  /** Checks now (the interval does it every second). */
  check (): Promise<void>
  close (): Promise<void>
}

/**
 * Watches free space in the data directory with statfs(2) once a second (a few microseconds,
 * no file touched) and says when it is below the reserve, so writers can refuse new work
 * before PGlite or the spool reach ENOSPC. Embedded PGlite does not fail cleanly there: when it
 * cannot create a WAL segment it spins in XLogFlush with the event loop blocked (SIGTERM
 * ignored), and a restart with under 16 MB free fails to initialize.
 */
export async function watchDiskReserve (options: { dir: string, reserveBytes: number, log: Logger, intervalMs?: number }): Promise<DiskReserve> {
  const log = options.log.child({ component: 'disk-reserve' })
  let free = Number.POSITIVE_INFINITY
  let isLow = false

  async function check (): Promise<void> {
    let stats: Awaited<ReturnType<typeof fs.statfs>>
    try {
      stats = await fs.statfs(options.dir)
    } catch (err) {
      // Cannot tell: keep the last answer (the directory is Vigil's own; a failure here is rare).
      log.warn({ err }, 'statfs of the data directory failed')
      return
    }
    free = stats.bavail * stats.bsize
    const nowLow = free < options.reserveBytes
    if (nowLow !== isLow) {
      isLow = nowLow
      const fields = { freeBytes: free, reserveBytes: options.reserveBytes }
      if (nowLow) log.error(fields, 'data directory below its free-space reserve: refusing publishes and API writes')
      else log.info(fields, 'data directory back above its free-space reserve: accepting writes')
    }
  }

  await check()
  const timer = setInterval(() => { check().catch(() => {}) }, options.intervalMs ?? CHECK_INTERVAL_MS)
  timer.unref()
  return {
    low: () => isLow,
    freeBytes: () => free,
    reserveBytes: options.reserveBytes,
    check,
    async close () { clearInterval(timer) }
  }
}
