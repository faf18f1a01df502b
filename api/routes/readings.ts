import { Type } from '@fastify/type-provider-typebox'
import type { StoredReading } from '../../readings/reading.ts'
import { maxAggregateBuckets } from '../../readings/reading-store.ts'
import { metricLabels } from '../../readings/vitals-catalogue.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import {
  instantMs,
  invalid,
  AggregateQuery, AggregateResult, IdParams, Reading, ReadingsQuery,
  bucketCount, decodeReadingCursor, encodeReadingCursor, errorResponses, page, pageOf, parseEvery, suggestEvery
} from '../schemas/common.ts'

/** The stores' own guard, checked here first so the client gets a 400 with a usable `every`. */
export const MAX_BUCKETS = maxAggregateBuckets

function toReading (r: StoredReading) {
  return { metric: r.metric, value: r.value, unit: r.unit, ts: new Date(r.ts).toISOString(), deviceId: r.deviceId, seq: r.seq }
}

function range (from: string | undefined, to: string | undefined): { from?: number, to?: number } {
  const fromMs = from === undefined ? undefined : instantMs(from, 'querystring/from')
  const toMs = to === undefined ? undefined : instantMs(to, 'querystring/to')
  if (fromMs !== undefined && toMs !== undefined && fromMs >= toMs) throw invalid('querystring/to', 'must be after from')
  return { from: fromMs, to: toMs }
}

export function readingRoutes (app: ApiInstance, { patientAccess, readings }: Pick<RouteDeps, 'patientAccess' | 'readings'>): void {
  app.get('/vitals', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['readings'],
      summary: 'The vitals catalogue as screens label it: name, abbreviation, canonical unit and how to write it',
      description: 'The web app labels every metric from this list (readings/vitals-catalogue.ts), so a new metric needs no change to the page.',
      response: {
        200: Type.Object({
          items: Type.Array(Type.Object({ metric: Type.String(), label: Type.String(), abbreviation: Type.String(), unit: Type.String(), unitSymbol: Type.String() }))
        }),
        ...errorResponses()
      }
    }
  }, async () => ({ items: metricLabels() }))

  app.get('/patients/:id/readings', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['readings'],
      summary: 'A patient\'s readings, newest first',
      description: 'Times are RFC 3339 date-times (from inclusive, to exclusive). Pass the response\'s nextCursor ' +
        'as cursor for the next page (with the same filters); it is null on the last page. ' +
        'A cursor this API did not return gives 400 VIGIL_ERR_BAD_CURSOR.',
      params: IdParams,
      querystring: ReadingsQuery,
      response: { 200: page(Reading), ...errorResponses(404) }
    }
  }, async (request) => {
    const { metric, limit, cursor } = request.query
    const { from, to } = range(request.query.from, request.query.to)
    const after = cursor === undefined ? undefined : decodeReadingCursor(cursor)
    const rows = await patientAccess.requireAnd(request, request.params.id, { action: 'readings:read' },
      async () => await readings.query({ patientId: request.params.id, metric, from, to, limit: limit + 1, after }))
    const { items, nextCursor } = pageOf(rows, limit, (last) => encodeReadingCursor(last))
    return { items: items.map(toReading), nextCursor }
  })

  app.get('/patients/:id/readings/latest', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['readings'],
      summary: 'The latest reading of each metric',
      params: IdParams,
      response: { 200: Type.Object({ items: Type.Array(Reading) }), ...errorResponses(404) }
    }
  }, async (request) => {
    const latest = await patientAccess.requireAnd(request, request.params.id, { action: 'readings:read' }, async () => await readings.latest(request.params.id))
    return { items: latest.map(toReading) }
  })

  app.get('/patients/:id/readings/aggregate', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['readings'],
      summary: 'One metric in time buckets',
      description: `Buckets of width \`every\`, aligned to the Unix epoch, over [from, to); at most ${MAX_BUCKETS} buckets.`,
      params: IdParams,
      querystring: AggregateQuery,
      response: { 200: AggregateResult, ...errorResponses(404) }
    }
  }, async (request) => {
    const { metric, every, fn } = request.query
    const { from, to } = range(request.query.from, request.query.to) as { from: number, to: number }
    const everyMs = parseEvery(every)
    if (everyMs === null) throw invalid('querystring/every', 'must be <n>s, <n>m, <n>h or <n>d')
    const buckets = bucketCount(from, to, everyMs)
    if (buckets > MAX_BUCKETS) {
      throw invalid('querystring/every',
        `gives ${buckets} buckets over from–to; at most ${MAX_BUCKETS} are allowed: use every=${suggestEvery(to - from, MAX_BUCKETS)} or more, or a shorter range`)
    }
    const rows = await patientAccess.requireAnd(request, request.params.id, { action: 'readings:read' },
      async () => await readings.aggregate({ patientId: request.params.id, metric, from, to, everyMs, fn }))
    return { metric, fn, every, items: rows.map((b) => ({ ts: new Date(b.ts).toISOString(), value: b.value })) }
  })
}
