import { Type } from '@fastify/type-provider-typebox'
import type { ApiInstance, RouteDeps } from './route-deps.ts'
import { auditActor } from '../../access/access-policy.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { errorResponses } from '../schemas/common.ts'

/** What the API needs of the spool (readings/spool.ts). */
export interface SpoolAdmin {
  replayDeadLetters (): Promise<{ replayed: number }>
}

const ReplayResult = Type.Object({
  replayed: Type.Integer({ minimum: 0, description: 'Readings appended to the spool again; 0 when there were no dead letters' })
}, { additionalProperties: false })

/** Spool administration; registered when readings go through a spool (InfluxDB, the embedded default; not a Postgres server). */
export function spoolRoutes (app: ApiInstance, { spool, access }: Pick<RouteDeps, 'access'> & { spool: SpoolAdmin }): void {
  app.post('/admin/spool/dead-letter/replay', {
    config: { permission: 'users:admin' },
    schema: {
      tags: ['operations'],
      summary: 'Deliver the spool\'s dead letters again, after their cause was fixed',
      description: 'Readings InfluxDB refused as data it will never take (beyond the retention policy, a field type conflict, an unparsable line) are kept in spool/dead-letter.ndjson. Once the cause is fixed (a longer retention policy, the conflicting data dropped), this appends them to the spool again for delivery. Idempotent: rewriting a point is harmless; what InfluxDB still refuses returns to the dead-letter file. See docs/durability.md.',
      response: { 200: ReplayResult, ...errorResponses(503) }
    }
  }, async (request) => {
    let result: { replayed: number }
    try {
      result = await spool.replayDeadLetters()
    } catch (err) {
      request.log.warn({ error: (err as Error).message }, 'dead-letter replay failed')
      throw new VigilError('VIGIL_ERR_UNAVAILABLE', 'the spool could not take the dead letters now (full or closing); nothing was lost, retry later')
    }
    // The readings belong to many patients (PHI): audited as one access with no patient.
    await access.audit.record({
      ...auditActor(request), patientId: null,
      action: 'spool:replay', fields: ['readings'], outcome: 'allowed'
    })
    return result
  })
}
