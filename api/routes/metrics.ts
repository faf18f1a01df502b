import { Type } from '@fastify/type-provider-typebox'
import type { ApiDeps, ApiInstance } from './route-deps.ts'

/**
 * Prometheus scrape endpoint, unauthenticated like most exporters. It reveals traffic
 * volumes and process details: in production restrict it at the network (bind a private
 * interface, or a proxy/firewall rule that only admits the Prometheus server).
 */
export function metricsRoutes (app: ApiInstance, { metrics }: Pick<ApiDeps, 'metrics'>): void {
  app.get('/metrics', {
    // Never shed: an overloaded process is exactly when its metrics are needed.
    // Its own address budget (api/plugins/rate-limits.ts): scrapes are not public traffic.
    config: { shed: false, budget: 'operations' },
    schema: {
      tags: ['operations'],
      summary: 'Prometheus metrics (text exposition format; no auth, restrict by network)',
      security: [],
      response: { 200: Type.String({ description: 'Prometheus text format 0.0.4' }) }
    }
  }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    return await metrics.registry.metrics()
  })
}
