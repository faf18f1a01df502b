import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import { docsContentSecurityPolicy } from './security-headers.ts'

/**
 * The OpenAPI document (/docs/json, /docs/yaml), built from the routes' TypeBox schemas, and
 * Swagger UI at /docs. Register before the routes: the document lists those added after it.
 */
export async function registerOpenApi (app: FastifyInstance, limits: { rateLimitPerMinute: number, unauthenticatedRateLimitPerMinute: number }): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Vigil API',
        version: '1',
        description: 'Remote patient monitoring. Every /v1 route needs `Authorization: Bearer <token>` (an API token, or the ' +
          'access token from POST /v1/auth/login) except /v1/auth/*. ' +
          'Errors are `{code, message}` with a stable code (VIGIL_ERR_…); match on the code, not the message. ' +
          `Limits: ${limits.rateLimitPerMinute} requests/min per token, ${limits.unauthenticatedRateLimitPerMinute}/min per address ` +
          'without a valid token (429 VIGIL_ERR_RATE_LIMITED with Retry-After); 503 VIGIL_ERR_UNAVAILABLE with Retry-After ' +
          'while overloaded or while the database is unreachable.'
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
      tags: [
        { name: 'patients' }, { name: 'records' }, { name: 'devices' }, { name: 'readings' }, { name: 'alerts' }, { name: 'jobs' }, { name: 'voice notes' }, { name: 'research' }, { name: 'operations' }, { name: 'auth' }, { name: 'people' }
      ]
    }
  })
  // staticCSP replaces the API's CSP on the /docs routes only (the UI's own context).
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: docsContentSecurityPolicy })
}
