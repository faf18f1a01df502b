import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { WebAsset, WebAssets } from '../../web/build.ts'

/**
 * The web app's policy: its own script and stylesheet only, no inline script or style
 * attribute in markup, fetches to this origin only (the API and the alert stream), no framing.
 * uPlot and Preact set styles through the CSSOM (element.style), which CSP does not govern.
 * Not upgrade-insecure-requests: plain HTTP is the embedded default (see docsContentSecurityPolicy).
 */
export const webContentSecurityPolicy = [
  "default-src 'none'",
  "base-uri 'none'",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "img-src 'self' data:",
  "manifest-src 'self'",
  "object-src 'none'",
  "script-src 'self'",
  "script-src-attr 'none'",
  "style-src 'self'"
].join('; ')

/** The paths the page answers (its screens); the page reads the path itself. */
const PAGES = ['/', '/alerts', '/me', '/admin', '/admin/*', '/patients/:id']

function send (request: FastifyRequest, reply: FastifyReply, asset: WebAsset): Buffer {
  const accepted = String(request.headers['accept-encoding'] ?? '')
  reply.header('content-type', asset.type).header('vary', 'accept-encoding')
  // Hashed names, no PHI: a browser may keep them for good.
  reply.header('cache-control', 'public, max-age=31536000, immutable')
  if (/\bbr\b/.test(accepted)) {
    reply.header('content-encoding', 'br')
    return asset.brotli
  }
  if (/\bgzip\b/.test(accepted)) {
    reply.header('content-encoding', 'gzip')
    return asset.gzip
  }
  return asset.body
}

/** Serves the web app at / (docs/web-app.md): the page for each screen and /assets/*. */
export function registerWebApp (app: FastifyInstance, webApp: () => Promise<WebAssets>): void {
  for (const url of PAGES) {
    app.get(url, { schema: { hide: true } }, async (_request, reply) => {
      // The page itself holds no PHI, but no-store keeps a signed-out tab's history from
      // restoring a rendered screen (Chromium keeps no-store pages out of the back/forward cache).
      reply.header('content-security-policy', webContentSecurityPolicy)
        .header('cache-control', 'no-store')
        .header('content-type', 'text/html; charset=utf-8')
      return (await webApp()).index
    })
  }
  app.get('/assets/:name', { schema: { hide: true } }, async (request, reply) => {
    const asset = (await webApp()).assets.get((request.params as { name: string }).name)
    if (asset === undefined) return await reply.code(404).send({ code: 'VIGIL_ERR_NOT_FOUND', message: 'no such route' })
    return send(request, reply, asset)
  })
}
