import { Readable } from 'node:stream'
import { Type } from '@fastify/type-provider-typebox'
import type { ReadingStore } from '../../readings/reading-store.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { listMetrics } from '../../readings/vitals-catalogue.ts'
import type { MetricRow } from '../../readings/vitals-catalogue.ts'
import { IdParams, MetricName, errorResponses, instantMs, invalid } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

// One store page per read: memory holds at most this many readings, whatever the range.
const PAGE = 1000

const CsvQuery = Type.Object({
  from: Type.String({ format: 'date-time', description: 'Inclusive' }),
  to: Type.String({ format: 'date-time', description: 'Exclusive' }),
  metric: Type.Optional(Type.Array(MetricName, { maxItems: 20, description: 'Repeat for several; default: every metric' }))
}, { additionalProperties: false })

/** `heart_rate [LOINC 8867-4] (/min)`: the column's metric, code and UCUM unit. */
export function csvColumn (m: MetricRow): string {
  return `${m.metric} [${m.loinc.startsWith('vigil-') ? m.loinc : `LOINC ${m.loinc}`}] (${m.unit})`
}

/**
 * The readings of [from, to) as CSV lines, newest first: one row per instant and device, one
 * column per metric. Reads the store a page at a time, so any range streams in constant memory.
 */
export async function * readingsCsv (store: ReadingStore, q: { patientId: string, from: number, to: number, metrics: readonly MetricRow[] }): AsyncGenerator<string> {
  const column = new Map(q.metrics.map((m, i) => [m.metric as string, i]))
  yield `time,device_id,${q.metrics.map(csvColumn).join(',')}\r\n`
  let row: { ts: number, deviceId: string, values: Array<number | undefined> } | null = null
  const line = (r: NonNullable<typeof row>) => `${new Date(r.ts).toISOString()},${r.deviceId},${r.values.map((v) => v ?? '').join(',')}\r\n`
  let after: StoredReading | undefined
  for (;;) {
    const metric = q.metrics.length === 1 ? q.metrics[0]!.metric : undefined
    const page = await store.query({ patientId: q.patientId, metric, from: q.from, to: q.to, limit: PAGE, after })
    for (const r of page) {
      const i = column.get(r.metric)
      if (i === undefined) continue
      if (row !== null && (row.ts !== r.ts || row.deviceId !== r.deviceId)) {
        yield line(row)
        row = null
      }
      row ??= { ts: r.ts, deviceId: r.deviceId, values: new Array(q.metrics.length).fill(undefined) }
      row.values[i] = r.value
    }
    if (page.length < PAGE) break
    after = page.at(-1)
  }
  if (row !== null) yield line(row)
}

/** RFC 4180 text/csv of one patient's readings over a range (issue 17), streamed. */
export function readingsCsvRoutes (app: ApiInstance, { patientAccess, readings }: Pick<RouteDeps, 'patientAccess' | 'readings'>): void {
  app.get('/patients/:id/readings.csv', {
    config: { permission: 'readings:read' },
    schema: {
      tags: ['readings'],
      summary: 'A patient\'s readings over a range as CSV',
      description: 'RFC 4180 CSV (CRLF), newest first: `time` (RFC 3339, UTC), `device_id`, then one column per metric named ' +
        '`metric [LOINC code] (UCUM unit)`; a cell is empty when the device sent no value of that metric at that instant. Streamed.',
      params: IdParams,
      querystring: CsvQuery,
      response: {
        200: { description: 'CSV (RFC 4180)', content: { 'text/csv': { schema: { type: 'string' } } } },
        ...errorResponses(404)
      }
    }
  }, async (request, reply) => {
    const from = instantMs(request.query.from, 'querystring/from')
    const to = instantMs(request.query.to, 'querystring/to')
    if (from >= to) throw invalid('querystring/to', 'must be after from')
    const wanted = request.query.metric
    const metrics = listMetrics().filter((m) => wanted === undefined || wanted.includes(m.metric))
    await patientAccess.require(request, request.params.id, { action: 'readings:read', details: { format: 'csv' } })
    reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="readings-${request.params.id}.csv"`)
    // A stream goes out as it is read; the response schema's type only documents it.
    return await reply.send(Readable.from(readingsCsv(readings, { patientId: request.params.id, from, to, metrics })) as unknown as string)
  })
}
