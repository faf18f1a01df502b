import fs from 'node:fs/promises'
import path from 'node:path'

export class DataDirLockedError extends Error {
  constructor (readonly dataDir: string, readonly pid: number) {
    super(`VIGIL_DATA_DIR ${dataDir} is in use by another Vigil (pid ${pid}): the embedded database and the spool allow one process; stop it or use another VIGIL_DATA_DIR`)
    this.name = 'DataDirLockedError'
  }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * One Vigil per data directory: PGlite and the spool would both be corrupted by two writers.
 * A lock left by a process that died is taken over. Returns the release function.
 */
export async function lockDataDir (dataDir: string): Promise<() => Promise<void>> {
  const file = path.join(dataDir, 'vigil.pid')
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fs.writeFile(file, `${process.pid}\n`, { flag: 'wx' })
      return async () => { await fs.rm(file, { force: true }) }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = Number((await fs.readFile(file, 'utf8').catch(() => '')).trim())
      if (Number.isInteger(pid) && pid > 0 && alive(pid)) throw new DataDirLockedError(dataDir, pid)
      await fs.rm(file, { force: true }) // stale: its process is gone
    }
  }
  throw new Error(`could not lock ${file}`)
}
