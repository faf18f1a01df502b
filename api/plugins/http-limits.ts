import type { FastifyInstance } from 'fastify'
import { VigilError } from '../../errors/catalogue.ts'

/** What one HTTP request may weigh and take, before any route sees it. */
export const httpLimits = {
  // API bodies are small JSON documents; the largest (a device) is well under 1 KiB.
  bodyLimitBytes: 64 * 1024,
  // The longest legitimate URL, a readings query with a 512-character cursor, is under 800
  // characters. RFC 9110 §15.5.15: 414 for a target longer than the server will interpret.
  maxUrlLength: 4096,
  // Node's default, stated so a NODE_OPTIONS=--max-http-header-size cannot widen it. Node
  // counts the request line too, so this also caps a URL before the router sees it.
  maxHeaderBytes: 16 * 1024,
  // Fastify's default is no limit: a client could trickle a request for ever (slowloris).
  requestTimeoutMs: 30_000
} as const

/** The limits as Fastify's server options. */
export const httpServerOptions = {
  bodyLimit: httpLimits.bodyLimitBytes,
  requestTimeout: httpLimits.requestTimeoutMs,
  http: { maxHeaderSize: httpLimits.maxHeaderBytes }
}

/** 414 for a URL longer than `httpLimits.maxUrlLength` (a root onRequest hook: for every route and 404). */
export function registerUrlLengthLimit (app: FastifyInstance): void {
  app.addHook('onRequest', async (request) => {
    if (request.url.length > httpLimits.maxUrlLength) {
      throw new VigilError('VIGIL_ERR_URL_TOO_LONG', `the URL is longer than ${httpLimits.maxUrlLength} characters`)
    }
  })
}
