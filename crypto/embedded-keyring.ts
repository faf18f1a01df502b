import fs from 'node:fs/promises'
import path from 'node:path'
import type { Logger } from 'pino'
import { SecretKeyFormatError, newSecretKeyFile, parseSecretKeyFile } from './secret-keys.ts'
import { newKey } from './field-encryption.ts'
import type { Keyring } from './field-encryption.ts'

export const EMBEDDED_KEY_FILE = 'secret-keys.json'

/**
 * The embedded default's keyring: `<dataDir>/secret-keys.json`, created with fresh random keys
 * on first start (mode 0600, written to a temporary file, fsync'd and renamed so a crash never
 * leaves half a key file) and reused afterwards. A key kept next to the data it protects only
 * guards against a stolen database dump or backup without the data directory, hence the warning.
 */
export async function openEmbeddedKeyring (dataDir: string, log: Logger): Promise<Keyring> {
  const file = path.join(dataDir, EMBEDDED_KEY_FILE)
  let text: string | null = null
  try {
    text = await fs.readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (text === null) {
    const temporary = `${file}.${process.pid}.tmp`
    const handle = await fs.open(temporary, 'wx', 0o600)
    try {
      await handle.writeFile(newSecretKeyFile(newKey(), newKey()))
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(temporary, file)
    const dir = await fs.open(dataDir, 'r')
    try {
      await dir.sync()
    } finally {
      await dir.close()
    }
    text = await fs.readFile(file, 'utf8')
    log.warn({ file }, 'no VIGIL_SECRET_KEY or VIGIL_SECRET_KEY_FILE: created a PHI encryption key in the data directory; production must supply its own key (and keep it apart from the database backups)')
  } else {
    log.warn({ file }, 'PHI encryption key read from the data directory (embedded default): production must set VIGIL_SECRET_KEY or VIGIL_SECRET_KEY_FILE')
  }
  try {
    return parseSecretKeyFile(text)
  } catch (err) {
    if (err instanceof SecretKeyFormatError) throw new Error(`${file} ${err.message}`)
    throw err
  }
}
