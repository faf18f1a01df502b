import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'

const { app } = await startApiFixture(t, 'docs test')

interface Operation {
  parameters?: Array<{ in: string, name: string }>
  responses: Record<string, unknown>
  security?: unknown[]
  tags?: string[]
  requestBody?: unknown
}

t.test('every route\'s request and response schemas compile (they are compiled lazily, on first use)', async (t) => {
  await app.ready() // routes hand their schemas to the compilers when the app gets ready
  const compiled = app.compileAllSchemas()
  t.ok(compiled.validators > 50, `${compiled.validators} request validators compiled`)
  t.ok(compiled.serializers > 50, `${compiled.serializers} response serializers compiled`)
  t.same(app.compileAllSchemas(), { validators: 0, serializers: 0 }, 'each once')
})

t.test('/docs/json is an OpenAPI 3 document listing every route', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json() as {
    openapi: string
    info: { title: string, version: string }
    paths: Record<string, Record<string, Operation>>
    components: { securitySchemes: Record<string, unknown> }
    security: unknown[]
  }
  t.match(doc.openapi, /^3\.\d+\.\d+$/)
  t.type(doc.info.title, 'string')
  t.type(doc.info.version, 'string')
  t.same(doc.components.securitySchemes.bearerAuth, { type: 'http', scheme: 'bearer' })
  t.same(doc.security, [{ bearerAuth: [] }], 'bearer auth is the default')

  const expected: Record<string, string[]> = {
    '/v1/patients': ['get', 'post'],
    '/v1/patients/{id}': ['get'],
    '/v1/patients/{id}/readings': ['get'],
    '/v1/patients/{id}/readings/latest': ['get'],
    '/v1/patients/{id}/readings/aggregate': ['get'],
    '/v1/patients/{id}/readings.csv': ['get'],
    '/v1/patients/{id}/record': ['get', 'patch', 'put'],
    '/v1/patients/lookup': ['post'],
    '/v1/patients/search': ['post'],
    '/v1/admin/keys': ['get'],
    '/v1/devices': ['get', 'post'],
    '/v1/devices/{id}': ['get', 'patch'],
    '/v1/devices/{id}/assignment': ['delete', 'patch', 'put'],
    '/v1/devices/{id}/credentials': ['delete', 'post'],
    '/v1/devices/{id}/rejections': ['get'],
    // People, roles and access (issue 3)
    '/v1/auth/login': ['post'],
    '/v1/auth/refresh': ['post'],
    '/v1/auth/logout': ['post'],
    // The web app's cookie sign-in and its worklist (issue 15)
    '/v1/auth/browser/login': ['post'],
    '/v1/auth/browser/session': ['get'],
    '/v1/auth/browser/refresh': ['post'],
    '/v1/auth/browser/logout': ['post'],
    '/v1/worklist': ['get'],
    '/v1/vitals': ['get'],
    '/v1/me/break-glass': ['get'],
    '/v1/users': ['get', 'post'],
    '/v1/users/{id}': ['delete', 'get', 'patch'],
    '/v1/users/{id}/roles/{roleId}': ['delete', 'put'],
    '/v1/roles': ['get', 'post'],
    '/v1/care-teams': ['get', 'post'],
    '/v1/care-teams/{id}': ['delete'],
    '/v1/patients/{id}/care-team': ['get'],
    '/v1/patients/{id}/break-glass': ['post'],
    '/v1/break-glass': ['get'],
    '/v1/audit': ['get'],
    '/v1/me/access-log': ['get'],
    '/v1/tokens': ['get', 'post'],
    '/v1/tokens/{id}': ['delete'],
    '/v1/jobs': ['get'],
    '/v1/jobs/{id}': ['delete', 'get'],
    '/v1/patients/{id}/voice-notes': ['get', 'post'],
    '/v1/patients/{id}/voice-notes/{voiceNoteId}': ['get'],
    '/v1/patients/{id}/voice-notes/{voiceNoteId}/release': ['post'],
    '/healthz': ['get'],
    '/metrics': ['get']
  }
  t.same(Object.keys(doc.paths).sort(), Object.keys(expected).sort(), 'exactly the API routes (docs routes hidden)')
  for (const [path, methods] of Object.entries(expected)) {
    t.same(Object.keys(doc.paths[path] ?? {}).sort(), methods, path)
    for (const method of methods) {
      const op = doc.paths[path]![method]!
      const where = `${method.toUpperCase()} ${path}`
      t.ok(Object.keys(op.responses).some((s) => s.startsWith('2')), `${where} declares its success response`)
      // Every templated segment is a declared path parameter (an OpenAPI 3 validity rule).
      for (const name of [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1])) {
        t.ok(op.parameters?.some((p) => p.in === 'path' && p.name === name), `${where} declares {${name}}`)
      }
      if (path.startsWith('/v1/') && !path.startsWith('/v1/auth/')) {
        t.ok('401' in op.responses, `${where} documents 401`)
        t.equal(op.security, undefined, `${where} uses the default (bearer) security`)
      } else {
        t.same(op.security, [], `${where} is public`)
      }
    }
  }
  const readingParams = doc.paths['/v1/patients/{id}/readings']!.get!.parameters!.filter((p) => p.in === 'query').map((p) => p.name)
  t.same(readingParams.sort(), ['cursor', 'from', 'limit', 'metric', 'to'])
  t.ok(doc.paths['/v1/devices']!.post!.requestBody, 'bodies are documented')
})

t.test('/docs serves the UI', async (t) => {
  const res = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/html/)
})
