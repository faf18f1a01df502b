import type { FastifyInstance } from 'fastify'

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])

export interface RequestTiming {
  method: string
  /** The route's template (`/v1/patients/:id/readings/latest`), never a path with ids in it; `unmatched` for unknown paths. */
  route: string
  /** `2xx`, `4xx`, `5xx` … */
  status: string
}

/**
 * Times every answer, from the request's arrival to the answer sent (Fastify's `elapsedTime`),
 * refused ones included: labels are the method, the route's template and the status class, so
 * their number stays bounded whatever paths or methods clients send.
 */
export function registerRequestMetrics (app: FastifyInstance, observe: (timing: RequestTiming, seconds: number) => void): void {
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url
    observe({
      method: METHODS.has(request.method) ? request.method : 'other',
      route: route === undefined || request.is404 ? 'unmatched' : route,
      status: `${Math.floor(reply.statusCode / 100)}xx`
    }, reply.elapsedTime / 1000)
  })
}
