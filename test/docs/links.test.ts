import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

// Every relative link in the project's Markdown (README.md, docs/*.md, the rooms' README.md
// files) must name a file or folder that exists and, with a #fragment, a heading in that file,
// so moving a page or renaming a heading cannot leave a reader on a dead end.

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const skippedFolders = new Set(['node_modules', 'data', 'results', 'coverage'])

/** The Markdown files under `dir`, skipping dependencies, data and dot folders. */
function markdownFiles (dir: string): string[] {
  const found: string[] = []
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.') || skippedFolders.has(entry.name)) continue
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) found.push(...markdownFiles(full))
    else if (entry.name.endsWith('.md')) found.push(full)
  }
  return found
}

/** The lines of a Markdown file outside fenced code blocks (a `# comment` in a shell block is no heading). */
function proseLines (text: string): string[] {
  const lines: string[] = []
  let fence: string | null = null
  for (const line of text.split('\n')) {
    const marker = /^\s*(`{3,}|~{3,})/.exec(line)?.[1]
    if (marker !== undefined) {
      if (fence === null) fence = marker[0] ?? null
      else if (marker[0] === fence) fence = null
      continue
    }
    if (fence === null) lines.push(line)
  }
  return lines
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
export function slug (heading: string): string {
  return heading
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-')
}

/** The anchors a file offers, with GitHub's -1, -2 … for repeated headings. */
function anchors (text: string): Set<string> {
  const seen = new Map<string, number>()
  const result = new Set<string>()
  for (const line of proseLines(text)) {
    const heading = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)?.[1]
    if (heading === undefined) continue
    const base = slug(heading)
    const count = seen.get(base) ?? 0
    seen.set(base, count + 1)
    result.add(count === 0 ? base : `${base}-${count}`)
  }
  return result
}

/** Broken relative links in the Markdown files under `dir`, as `file: target (why)`. */
export function brokenLinks (dir: string): string[] {
  const broken: string[] = []
  const anchorCache = new Map<string, Set<string>>()
  const anchorsOf = (file: string): Set<string> => {
    let set = anchorCache.get(file)
    if (set === undefined) {
      set = anchors(fs.readFileSync(file, 'utf8'))
      anchorCache.set(file, set)
    }
    return set
  }
  for (const file of markdownFiles(dir)) {
    const prose = proseLines(fs.readFileSync(file, 'utf8')).join('\n').replace(/`[^`\n]*`/g, '')
    for (const match of prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = match[1] ?? ''
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue // https:, mailto: …
      const hash = target.indexOf('#')
      const pathPart = hash === -1 ? target : target.slice(0, hash)
      const fragment = hash === -1 ? '' : target.slice(hash + 1)
      const where = `${path.relative(dir, file)}: ${target}`
      const resolved = pathPart === '' ? file : path.resolve(path.dirname(file), decodeURIComponent(pathPart))
      if (!fs.existsSync(resolved)) {
        broken.push(`${where} (no such file)`)
        continue
      }
      if (fragment === '') continue
      if (!resolved.endsWith('.md')) {
        broken.push(`${where} (an anchor into a file that is not Markdown)`)
        continue
      }
      if (!anchorsOf(resolved).has(fragment)) broken.push(`${where} (no heading with this anchor)`)
    }
  }
  return broken
}

t.test('anchors are made the way GitHub makes them', async (t) => {
  const cases: Array<[string, string]> = [
    ['What PUBACK means', 'what-puback-means'],
    ['Login, refresh, logout', 'login-refresh-logout'],
    ['`threshold`', 'threshold'],
    ['Re-alert: a hand resolve does not silence a condition', 're-alert-a-hand-resolve-does-not-silence-a-condition'],
    ['Devices and MQTT: topics & payloads', 'devices-and-mqtt-topics--payloads'],
    ['PHI at rest ([details](x.md))', 'phi-at-rest-details']
  ]
  for (const [heading, anchor] of cases) t.equal(slug(heading), anchor, heading)
})

t.test('the checker finds a missing file, a missing anchor and ignores code', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vigil-links-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.mkdirSync(path.join(dir, 'docs'))
  fs.writeFileSync(path.join(dir, 'README.md'), [
    '# Top', '', '## Second part', '',
    '[ok](docs/page.md#a-heading) [ok too](#second-part) [site](https://example.org/x.md)',
    '[gone](docs/missing.md) [bad anchor](docs/page.md#nowhere) [self](#nothing-here)',
    '`[in code](docs/also-missing.md)`',
    '```', '[in a block](docs/block-missing.md)', '# not a heading', '```'
  ].join('\n'))
  fs.writeFileSync(path.join(dir, 'docs', 'page.md'), '# A heading\n\n[back](../README.md#top) [dup](#more-1)\n\n## More\n\n## More\n')
  t.same(brokenLinks(dir).sort(), [
    'README.md: #nothing-here (no heading with this anchor)',
    'README.md: docs/missing.md (no such file)',
    'README.md: docs/page.md#nowhere (no heading with this anchor)'
  ])
})

t.test('every relative link in the project Markdown resolves', async (t) => {
  const files = markdownFiles(root)
  t.ok(files.some((f) => f === path.join(root, 'README.md')), 'README.md is checked')
  t.ok(files.some((f) => f.startsWith(path.join(root, 'docs') + path.sep)), 'docs/ is checked')
  t.same(brokenLinks(root), [], 'no broken links')
})
