import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { createLogger } from '../../observability/logger.ts'
import { openDatabase } from '../../store/database.ts'
import { schemaKey } from './schema-key.ts'

/**
 * A fresh embedded database costs PGlite's initdb plus every migration: about 8 s of CPU here,
 * paid again by every test that starts a Vigil on a new data directory. Instead the first test
 * that needs one builds it once (a real `openDatabase` on an empty directory, then closed), and
 * every later one copies that directory (about 0.5 s). The copy is keyed by the PGlite version
 * and the migrations' text, so a changed migration builds a new template. Like Postgres'
 * `CREATE DATABASE … TEMPLATE`, it is the same database a first start makes, not a fake:
 * test/api/api-embedded.test.ts still runs the real first start on an empty directory.
 */
async function templateDir (): Promise<string> {
  return path.join(os.tmpdir(), `vigil-test-pglite-${await schemaKey('pglite')}`)
}

let built: Promise<string> | undefined

export async function ensureEmbeddedTemplate (): Promise<string> {
  const dir = await templateDir()
  if (await fs.stat(path.join(dir, 'PG_VERSION')).then(() => true, () => false)) return dir
  // Built beside the target and renamed into place: a test file running at the same time sees
  // either no template or a whole one; if two build at once, the second rename fails and its copy is dropped.
  const work = `${dir}.building-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    const db = await openDatabase({ databaseUrl: null, dataDir: work, log: createLogger('silent') })
    await db.close()
    await fs.rename(path.join(work, 'pglite'), dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err
    })
  } finally {
    await fs.rm(work, { recursive: true, force: true })
  }
  return dir
}

/**
 * Gives `dataDir` an embedded database (`<dataDir>/pglite`) with every migration applied,
 * copied from the per-machine template, unless it already has one. Returns `dataDir`.
 */
export async function seedEmbeddedDatabase (dataDir: string): Promise<string> {
  const target = path.join(dataDir, 'pglite')
  if (await fs.stat(target).then(() => true, () => false)) return dataDir
  built ??= ensureEmbeddedTemplate()
  const template = await built
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 })
  await fs.cp(template, target, { recursive: true })
  return dataDir
}
