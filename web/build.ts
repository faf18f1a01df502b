import { createHash } from 'node:crypto'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { brotliCompress, constants, gzip } from 'node:zlib'
import * as esbuild from 'esbuild'

// The web app is bundled when Vigil starts, in memory (docs/web-app.md "Build"): the served
// bundle is always the source's, whatever the install did (npm ci --ignore-scripts, a copied
// checkout, a Docker layer), and there is no build output to go stale or to commit. esbuild
// is a runtime dependency for it; bundling takes well under a second. It runs on the first
// request for a page (lazyWebApp), not at start: an idle Vigil nobody opens a browser on holds
// no esbuild service process and no build garbage.

const here = path.dirname(fileURLToPath(import.meta.url))
const entry = path.join(here, 'src', 'main.tsx')

export interface WebAsset {
  /** Path under /assets/, with the content hash in its name. */
  name: string
  type: string
  body: Buffer
  gzip: Buffer
  brotli: Buffer
}

export interface WebAssets {
  /** The one HTML page (every screen): no inline script or style. */
  index: Buffer
  /** By name (app-<hash>.js, app-<hash>.css). */
  assets: ReadonlyMap<string, WebAsset>
}

const gzipAsync = promisify(gzip)
const brotliAsync = promisify(brotliCompress)

// Compressed on libuv's thread pool, not the event loop: start-up goes on meanwhile.
async function asset (base: string, ext: string, type: string, body: Buffer): Promise<WebAsset> {
  const hash = createHash('sha256').update(body).digest('base64url').slice(0, 12)
  const [gzipped, brotli] = await Promise.all([
    gzipAsync(body, { level: 9 }),
    brotliAsync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: body.length } })
  ])
  return { name: `${base}-${hash}.${ext}`, type, body, gzip: gzipped, brotli }
}

/** Bundles web/src into one script and one stylesheet, compressed, with the page that loads them. */
export async function buildWebApp (options: { minify?: boolean } = {}): Promise<WebAssets> {
  const result = await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    outdir: 'out',
    format: 'esm',
    target: ['es2022'],
    minify: options.minify ?? true,
    jsx: 'automatic',
    jsxImportSource: 'preact',
    legalComments: 'none',
    logLevel: 'silent',
    loader: { '.css': 'css' }
  })
  let js: WebAsset | undefined
  let css: WebAsset | undefined
  for (const file of result.outputFiles) {
    if (file.path.endsWith('.js')) js = await asset('app', 'js', 'text/javascript; charset=utf-8', Buffer.from(file.contents))
    if (file.path.endsWith('.css')) css = await asset('app', 'css', 'text/css; charset=utf-8', Buffer.from(file.contents))
  }
  if (js === undefined || css === undefined) throw new Error('web app build: esbuild gave no script or no stylesheet')
  const index = Buffer.from(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Vigil</title>
<link rel="stylesheet" href="/assets/${css.name}">
<script type="module" src="/assets/${js.name}"></script>
</head>
<body>
<div id="app"><noscript>Vigil needs JavaScript.</noscript></div>
</body>
</html>
`)
  return { index, assets: new Map([[js.name, js], [css.name, css]]) }
}

/**
 * The bundle, built on first use and kept; esbuild's service process is stopped once it is
 * built. A failed build is not kept: the next request tries again.
 */
export function lazyWebApp (options: { minify?: boolean } = {}): () => Promise<WebAssets> {
  let built: Promise<WebAssets> | null = null
  return async () => {
    built ??= buildWebApp(options).finally(() => { void esbuild.stop() })
    try {
      return await built
    } catch (err) {
      built = null
      throw err
    }
  }
}
