import helmet from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'

/**
 * Helmet's headers on every response (nosniff, HSTS, no-referrer, same-origin CORP/COOP,
 * X-Frame-Options …; helmet also strips `x-powered-by`, which Fastify never sets), and
 * `Cache-Control: no-store`.
 *
 * The CSP is the one OWASP's REST Security Cheat Sheet gives for APIs: a JSON response is
 * never a document to render, so it may load nothing and be framed by nothing. Swagger UI
 * under /docs gets its own policy (`docsContentSecurityPolicy`), set by @fastify/swagger-ui
 * on its routes only.
 */
export async function registerSecurityHeaders (app: FastifyInstance): Promise<void> {
  await app.register(helmet, {
    contentSecurityPolicy: {
      // Helmet's defaults are for HTML sites and include upgrade-insecure-requests.
      useDefaults: false,
      directives: {
        defaultSrc: ["'none'"],
        baseUri: ["'none'"],
        formAction: ["'none'"],
        frameAncestors: ["'none'"]
      }
    },
    // Nothing here is meant to be framed, not even by our own pages.
    frameguard: { action: 'deny' }
  })
  app.addHook('onRequest', async (_request, reply) => {
    // Responses hold PHI (names, vitals): no browser or proxy may keep a copy. Swagger
    // UI's static files replace this with their own (they hold none).
    reply.header('cache-control', 'no-store')
  })
}

/**
 * Swagger UI loads its scripts, styles and images from /docs itself (its images are data:
 * URIs in the stylesheet); it fetches /docs/json and, with "Try it out", the API, all same
 * origin. No inline script or style, no eval, no third party: its validator badge is off
 * (validatorUrl null) so the document is never sent to validator.swagger.io.
 * Not upgrade-insecure-requests: the API is plain HTTP until TLS lands, and that directive
 * would send the page's own assets to an https origin that does not exist.
 */
export const docsContentSecurityPolicy = [
  "default-src 'self'",
  "base-uri 'self'",
  "connect-src 'self'",
  "font-src 'self' data:",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "img-src 'self' data:",
  "object-src 'none'",
  "script-src 'self'",
  "script-src-attr 'none'",
  "style-src 'self'"
].join('; ')
