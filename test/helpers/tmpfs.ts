import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface Tmpfs {
  readonly dir: string
  /** Bytes free now (statfs). */
  freeBytes (): Promise<number>
  /** Unmounts and removes the mount point. */
  close (): Promise<void>
}

/** Why a real small disk cannot be made here, or null when it can (mount needs root). */
export function tmpfsUnavailable (): string | null {
  return process.getuid?.() === 0 ? null : 'mounting a tmpfs needs root (these tests fill a real small disk to ENOSPC)'
}

/** A real tmpfs of `megabytes` MB: a disk that fills up for real (ENOSPC), without filling the machine's. */
export async function mountTmpfs (megabytes: number): Promise<Tmpfs> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-tmpfs-'))
  try {
    await run('mount', ['-t', 'tmpfs', '-o', `size=${megabytes}m,mode=0700`, 'tmpfs', dir])
  } catch (err) {
    await fs.rmdir(dir).catch(() => {})
    throw err
  }
  return {
    dir,
    async freeBytes () {
      const stats = await fs.statfs(dir)
      return stats.bavail * stats.bsize
    },
    async close () {
      await run('umount', ['-l', dir])
      await fs.rmdir(dir)
    }
  }
}
