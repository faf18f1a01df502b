import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

// Issue 16: the compose file reads secrets from a .env beside it; without these lines git could
// commit it and `COPY . .` baked it into the image.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const secrets = ['.env', '.env.production', 'secrets/admin-token', 'data/secret-keys.json', 'secret-keys.json', 'tls/server.key', 'tls/server.pem']

t.test('git ignores .env, secrets and data directories', async (t) => {
  for (const file of secrets) {
    // check-ignore exits 0 when the path is ignored, 1 when it is not (it need not exist).
    const ignored = (() => {
      try {
        execFileSync('git', ['check-ignore', '-q', '--no-index', file], { cwd: root, stdio: 'ignore' })
        return true
      } catch {
        return false
      }
    })()
    t.ok(ignored, `.gitignore covers ${file}`)
  }
})

/**
 * Docker's .dockerignore matching, as far as these paths need it: a pattern matches the path or
 * one of its parent directories; `*` stays within one path segment; a leading `**\/` matches
 * any depth; `!` lines re-include.
 */
function dockerIgnores (patterns: string[], file: string): boolean {
  let ignored = false
  for (const line of patterns) {
    const negate = line.startsWith('!')
    const pattern = (negate ? line.slice(1) : line).replace(/^\/+|\/+$/g, '')
    const source = pattern.split('/').map((segment) => segment === '**'
      ? '(?:.*)'
      : segment.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')).join('/').replace(/\(\?:\.\*\)\//g, '(?:.*/)?')
    const re = new RegExp(`^${source}(?:/.*)?$`)
    if (re.test(file)) ignored = !negate
  }
  return ignored
}

t.test('the Docker build context leaves out .env, secrets and data directories', async (t) => {
  const patterns = fs.readFileSync(path.join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
  for (const file of [...secrets, 'config/.env', 'node_modules/x/index.js', 'dist/main.js']) t.ok(dockerIgnores(patterns, file), `.dockerignore covers ${file}`)
  for (const file of ['main.ts', 'config/alert-rules.yaml', 'package.json', 'crypto/secret-keys.ts', 'scripts/build.mjs', 'scripts/service-rooms.mjs', 'scripts/layout-floors.json']) t.notOk(dockerIgnores(patterns, file), `${file} stays in the image`)
})
