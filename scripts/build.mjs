// Compiles the service's TypeScript to JavaScript in dist/, file for file, for `npm start` and the
// image: no TypeScript loader in the running process or its worker threads (an idle embedded
// Vigil held 285 MB under tsx and 223 MB as plain JavaScript; a worker thread starts in a fifth of
// the CPU). Tests and the dev scripts still run the sources through tsx.
//
// dist/ mirrors the source tree: `alerts/engine/evaluate-task.ts` → `dist/alerts/engine/evaluate-task.js`
// with its relative imports rewritten from .ts to .js, and every other file of those folders
// (migrations, the rules file, the language model's texts, the web app's sources, which
// web/build.ts bundles for the browser at run time) copied beside it, so paths taken from
// import.meta.url resolve as they do in the sources. Packages stay in node_modules.
//
// Plain JavaScript (not .ts) so it runs before anything is compiled. Usage:
//   node scripts/build.mjs [--outdir DIR] [--quiet]
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import * as esbuild from 'esbuild'
import { serviceRooms } from './service-rooms.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { values } = parseArgs({ options: { outdir: { type: 'string' }, quiet: { type: 'boolean', default: false } } })
const outdir = path.resolve(values.outdir ?? path.join(root, 'dist'))

// What is the service: the rooms of the layout (scripts/service-rooms.mjs; a new room gets its line
// in scripts/layout-floors.json) and the top-level sources (main.ts, vigil.ts, rekey.ts).
// Named, not "everything but": a data directory or anything else left in the checkout is never copied.
const rooms = await serviceRooms(root)

async function walk (dir, rel) {
  const out = []
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue
    const relPath = `${rel}/${entry.name}`
    if (entry.isDirectory()) out.push(...await walk(path.join(dir, entry.name), relPath))
    else if (entry.isFile()) out.push(relPath)
  }
  return out
}

const started = performance.now()
const topLevel = (await fs.readdir(root, { withFileTypes: true })).filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => e.name)
const files = [...topLevel, ...(await Promise.all(rooms.map(async (room) => await walk(path.join(root, room), room)))).flat()]
// web/src is compiled too (the server imports web/src/urgency.ts) and copied as it is (the browser bundle's input).
const sources = files.filter((f) => /\.tsx?$/.test(f) && !f.endsWith('.d.ts'))
// The folders' README.md pages are docs, not the service's (and their links point into docs/).
const assets = files.filter((f) => f.includes('/') && !f.endsWith('.md') && (!/\.tsx?$/.test(f) || f.startsWith('web/src/')))

await fs.rm(outdir, { recursive: true, force: true })
await esbuild.build({
  absWorkingDir: root,
  entryPoints: sources,
  outdir,
  outbase: root,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
  plugins: [{
    name: 'one-file-each',
    setup (build) {
      // Every import stays an import: relative ones to the compiled sibling, packages as they are.
      build.onResolve({ filter: /.*/ }, (args) => {
        if (args.kind === 'entry-point') return undefined
        if (args.path.startsWith('.')) return { path: args.path.replace(/\.tsx?$/, '.js'), external: true }
        return { path: args.path, external: true }
      })
    }
  }]
})
await Promise.all(assets.map(async (f) => {
  await fs.mkdir(path.dirname(path.join(outdir, f)), { recursive: true })
  await fs.copyFile(path.join(root, f), path.join(outdir, f))
}))
if (!values.quiet) {
  process.stdout.write(`built ${sources.length} files and copied ${assets.length} into ${path.relative(process.cwd(), outdir) || '.'} in ${Math.round(performance.now() - started)} ms\n`)
}
