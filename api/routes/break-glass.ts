import { Type } from '@fastify/type-provider-typebox'
import { auditActor } from '../../access/access-policy.ts'
import type { Principal } from '../../access/auth.ts'
import { VigilError } from '../../errors/catalogue.ts'
import { BreakGlassGrant, BreakGlassQuery, BreakGlassRequest } from '../schemas/access.ts'
import { IdParams, Uuid, errorResponses, instantMs, invalid } from '../schemas/common.ts'
import type { ApiInstance, RouteDeps } from './route-deps.ts'

const MIN_REASON_LENGTH = 10

// Characters that show nothing: controls, format characters (zero-width space/joiners, word
// joiner, BOM, soft hyphen, bidi marks; \p{Cf}), line/paragraph separators, and the fillers
// and blanks Unicode classes as letters or symbols (Hangul fillers, braille blank, Mongolian
// vowel separator, combining grapheme joiner), and every Default_Ignorable_Code_Point
// (Unicode 15 DerivedCoreProperties: variation selectors, Khmer inherent vowels, Mongolian
// free variation selectors …; security pass F2).
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Default_Ignorable_Code_Point}\u034f\u115f\u1160\u180e\u2800\u3164\uffa0]/gu
// What makes a reason readable: letters and digits. Lone combining marks, symbols such as
// U+FFFC or U+1D159 and punctuation show little or nothing, so they do not count.
const LETTER_OR_DIGIT = /[\p{L}\p{N}]/gu

/** A break-glass reason as it is checked and kept: invisible characters gone, spaces collapsed, trimmed (issue 11 §9). */
export function normalizeReason (text: string): string {
  return text.normalize('NFC').replace(/[\t\n\r\v\f]/g, ' ').replace(INVISIBLE, '').replace(/\s+/gu, ' ').trim()
}

/** Break-glass: a clinician opens a patient outside their care team, stating why; grants listed for review. */
export function breakGlassRoutes (app: ApiInstance, deps: RouteDeps): void {
  const { access, patients } = deps
  const { people, audit } = access

  app.post('/patients/:id/break-glass', {
    config: { permission: 'break-glass' },
    schema: {
      tags: ['people'],
      summary: 'Open a patient outside your care team, stating why',
      description: `Grants access for ${access.settings.breakGlassMinutes} minutes; the grant and every access through it are audited with the reason and listed for review (GET /v1/break-glass).`,
      params: IdParams,
      body: BreakGlassRequest,
      response: { 201: BreakGlassGrant, ...errorResponses(404, 413) }
    }
  }, async (request, reply) => {
    const principal = request.principal as Principal
    if (principal.userId === null || !principal.patientScopes.has('care-team')) {
      throw new VigilError('VIGIL_ERR_FORBIDDEN', 'break-glass is for clinicians signed in as themselves')
    }
    const patientId = request.params.id
    const reason = normalizeReason(request.body.reason)
    if ((reason.match(LETTER_OR_DIGIT)?.length ?? 0) < MIN_REASON_LENGTH) {
      throw invalid('body/reason', `must have at least ${MIN_REASON_LENGTH} letters or digits`)
    }
    const at = access.now()
    if (await patients.get(patientId) === null) {
      await audit.record({ ...auditActor(request), patientId, action: 'break-glass', fields: [], outcome: 'denied', breakGlassReason: reason, details: null })
      throw new VigilError('VIGIL_ERR_UNKNOWN_PATIENT', 'no patient with this id')
    }
    const limit = access.settings.breakGlassGrantsPerHour
    const result = await people.grantBreakGlassWithinLimit({
      userId: principal.userId, patientId, reason, at, expiresAt: new Date(at.getTime() + access.settings.breakGlassMinutes * 60_000)
    }, new Date(at.getTime() - 3_600_000), limit)
    await audit.record({
      ...auditActor(request), patientId, action: 'break-glass', fields: [],
      outcome: 'grant' in result ? 'allowed' : 'denied', breakGlassReason: reason, details: 'grant' in result ? null : { refused: 'grants-per-hour' }
    })
    if ('refused' in result) {
      const retryAfterMs = (result.refused.oldest?.getTime() ?? at.getTime()) + 3_600_000 - at.getTime()
      reply.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))))
      request.log.warn({ userId: principal.userId, limit }, 'break-glass refused: grants per hour')
      throw new VigilError('VIGIL_ERR_BREAK_GLASS_LIMIT', `at most ${limit} break-glass grants an hour`)
    }
    const grant = result.grant
    request.log.warn({ userId: principal.userId, grantId: grant.id }, 'break-glass access granted')
    reply.code(201)
    return grant
  })

  app.get('/me/break-glass', {
    config: { permission: 'break-glass' },
    schema: {
      tags: ['people'],
      summary: 'My unexpired break-glass grants: which patients, until when',
      description: 'For the web app\'s "time left" after a reload; the reasons are not repeated here.',
      response: { 200: Type.Object({ items: Type.Array(Type.Object({ patientId: Uuid, expiresAt: Type.String({ format: 'date-time' }) })) }), ...errorResponses() }
    }
  }, async (request) => {
    const principal = request.principal as Principal
    if (principal.userId === null) return { items: [] }
    return { items: await people.activeBreakGlass(principal.userId, access.now()) }
  })

  app.get('/break-glass', {
    config: { permission: 'audit:read' },
    schema: {
      tags: ['people'],
      summary: 'Break-glass grants for review, newest first',
      querystring: BreakGlassQuery,
      response: { 200: Type.Object({ items: Type.Array(BreakGlassGrant) }), ...errorResponses() }
    }
  }, async (request) => {
    const { limit, patientId } = request.query
    const from = request.query.from === undefined ? undefined : new Date(instantMs(request.query.from, 'querystring/from'))
    const to = request.query.to === undefined ? undefined : new Date(instantMs(request.query.to, 'querystring/to'))
    return { items: await people.listBreakGlass({ limit, patientId, from, to }) }
  })
}
