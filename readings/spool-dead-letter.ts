import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from 'pino'
import type { StoredReading } from './reading.ts'
import { fsyncDir, ioCode } from './spool-segments.ts'

/*
 * The spool's dead-letter file: readings the store will never accept as they stand, set aside
 * so they do not block every reading behind them (docs/durability.md, "Dead letters and replay").
 *
 *   dead-letter.ndjson            {"deadAt", "reason", "reading"} per line (PHI: stays in the data directory)
 *   dead-letter.ndjson.replaying  claimed by a replay that has not finished
 */

export const deadLetterName = 'dead-letter.ndjson'

export interface DeadReading { reading: StoredReading, reason: string }

export interface DeadLetterFile {
  /** Readings written to the file since it was opened. */
  written (): number
  /** Appends and fdatasyncs `dead`; only then may the checkpoint move past them. */
  write (dead: readonly DeadReading[]): Promise<void>
  /**
   * Hands the file's readings to `append` (which makes them durable again) and removes it; a
   * file claimed by an interrupted replay goes first. One replay at a time. `assertOpen` is
   * asked before each file is claimed.
   */
  replay (append: (readings: StoredReading[]) => Promise<void>, assertOpen: () => void): Promise<{ replayed: number }>
}

export function openDeadLetterFile (dir: string, log: Logger): DeadLetterFile {
  const file = path.join(dir, deadLetterName)
  const claimed = path.join(dir, `${deadLetterName}.replaying`)
  let written = 0
  // The file's name must survive a crash too: once per file is enough.
  let dirSynced = false
  let replaying: Promise<unknown> = Promise.resolve()

  async function write (dead: readonly DeadReading[]): Promise<void> {
    const deadAt = new Date().toISOString()
    const text = dead.map((d) => `${JSON.stringify({ deadAt, reason: d.reason, reading: d.reading })}\n`).join('')
    const handle = await fs.open(file, 'a', 0o600)
    try {
      if (!dirSynced) {
        await fsyncDir(dir)
        dirSynced = true
      }
      const size = (await handle.stat()).size
      try {
        await handle.appendFile(text)
        await handle.datasync()
      } catch (err) {
        // Cut a partial line so the file stays one JSON object per line; the retry rewrites it.
        await handle.truncate(size).catch(() => {})
        throw err
      }
    } finally {
      await handle.close()
    }
    written += dead.length
    for (const { reading, reason } of dead) {
      // Values and the patient id stay out of logs (PHI); the file holds the whole reading.
      log.error({ deviceId: reading.deviceId, metric: reading.metric, ts: reading.ts, reason, file: deadLetterName },
        'spool: the store permanently rejected a reading; moved to the dead-letter file')
    }
  }

  async function replayNow (append: (readings: StoredReading[]) => Promise<void>, assertOpen: () => void): Promise<{ replayed: number }> {
    let replayed = 0
    // A claimed file left by an interrupted replay first, then the current one.
    for (const fresh of [false, true]) {
      assertOpen()
      if (fresh) {
        try {
          await fs.rename(file, claimed)
        } catch (err) {
          if (ioCode(err) === 'ENOENT') break
          throw err
        }
        await fsyncDir(dir)
        // The next dead letter starts a new file, whose name must be synced again.
        dirSynced = false
      }
      let text: string
      try {
        text = await fs.readFile(claimed, 'utf8')
      } catch (err) {
        if (ioCode(err) === 'ENOENT') continue
        throw err
      }
      const readings = text.split('\n').filter((line) => line !== '').map((line) => (JSON.parse(line) as { reading: StoredReading }).reading)
      for (let i = 0; i < readings.length; i += 1000) await append(readings.slice(i, i + 1000))
      // Only once every reading is back in the spool (fsync'd): a crash before this replays them again.
      await fs.rm(claimed)
      await fsyncDir(dir)
      replayed += readings.length
    }
    if (replayed > 0) log.info({ replayed }, 'spool: dead letters appended again for delivery')
    return { replayed }
  }

  return {
    written: () => written,
    write,
    replay (append, assertOpen) {
      // One at a time: two would both read the .replaying file.
      const run = replaying.then(async () => await replayNow(append, assertOpen))
      replaying = run.catch(() => {})
      return run
    }
  }
}
