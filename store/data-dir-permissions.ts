import fs from 'node:fs/promises'
import path from 'node:path'

/** Group and other permission bits: none may be set anywhere under VIGIL_DATA_DIR. */
const GROUP_OTHER = 0o077

/**
 * Makes `root` and everything below it private to Vigil's user: directories 0700, files 0600.
 * The embedded database (its WAL holds PHI), the spool and the keyring live there. PGlite
 * writes the files of a new database 0666 whatever the umask (files it creates later follow
 * the umask, which startVigil sets to 0077), so this runs at start and after PGlite's init.
 * Symbolic links are not followed: a link may point outside the directory. Returns the paths
 * (relative to root) whose mode it changed.
 */
export async function makePrivate (root: string): Promise<string[]> {
  const changed: string[] = []
  const visit = async (file: string): Promise<void> => {
    let stat
    try {
      stat = await fs.lstat(file)
    } catch (err) {
      // PGlite may remove a file (a recycled WAL segment) while the walk runs.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    if (stat.isSymbolicLink()) return
    if (stat.isDirectory()) {
      if ((stat.mode & GROUP_OTHER) !== 0) {
        await fs.chmod(file, 0o700)
        changed.push(path.relative(root, file) || '.')
      }
      const entries = await fs.readdir(file).catch((err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return []; throw err })
      for (const name of entries) await visit(path.join(file, name))
    } else if ((stat.mode & GROUP_OTHER) !== 0) {
      await fs.chmod(file, 0o600).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
      changed.push(path.relative(root, file))
    }
  }
  await visit(root)
  return changed
}
