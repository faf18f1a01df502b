import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

/**
 * 16 hex digits naming the schema the migrations build (their names and text) and, for
 * PGlite, the engine version: test database templates are keyed by it, so a changed migration
 * or a PGlite upgrade builds a new template instead of reusing a stale one.
 */
export async function schemaKey (engine: 'pglite' | 'postgres'): Promise<string> {
  const migrations = path.join(root, 'store', 'migrations')
  const hash = createHash('sha256').update(engine)
  if (engine === 'pglite') {
    const pkg = JSON.parse(await fs.readFile(path.join(root, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')) as { version: string }
    hash.update(pkg.version)
  }
  for (const name of (await fs.readdir(migrations)).sort()) hash.update(name).update(await fs.readFile(path.join(migrations, name)))
  return hash.digest('hex').slice(0, 16)
}
