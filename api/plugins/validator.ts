import { Ajv, type ValidateFunction } from 'ajv'
import ajvFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'
import { createLazyCompilations } from './lazy-compile.ts'

/**
 * Fastify's default validator coerces every part and drops unknown properties. Here only the
 * URL parts (strings by nature) are coerced: in a JSON body `"displayName": 42` is a client
 * bug, not "42". Unknown properties are refused: a typo such as `firmwareVersoin` must be a
 * 400, not a PATCH that changes nothing. (The pattern from Fastify's validation docs.)
 *
 * Each schema is checked against the JSON Schema meta-schema when its route is registered (a
 * malformed schema still stops start-up) but compiled on its first request: compiling all of
 * them up front cost about a second of CPU at every start for routes most processes never see.
 * test/api/api-docs.test.ts compiles every route's schemas, so none can fail only in production.
 */
export interface LazyValidator {
  compiler: FastifySchemaCompiler<object>
  /** Compiles every schema not compiled yet; returns how many were compiled (tests). */
  compileAll (): number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Compiles every request validator and response serializer (plugins/serializer.ts) not compiled yet; returns how many of each. */
    compileAllSchemas (): { validators: number, serializers: number }
  }
}

export function createValidatorCompiler (): LazyValidator {
  // allErrors stays off, as in Fastify's defaults: with it a crafted body costs one error each.
  const common = { useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false } as const
  const body = new Ajv({ ...common, coerceTypes: false })
  const url = new Ajv({ ...common, coerceTypes: 'array' })
  ajvFormats.default(body)
  ajvFormats.default(url)
  const lazy = createLazyCompilations()
  const compiler: FastifySchemaCompiler<object> = ({ schema, httpPart }) => {
    const ajv = httpPart === 'body' ? body : url
    // One instance checks every schema against the meta-schema (the same draft for both): each
    // Ajv compiles its meta-schema on its first check, ~17 ms of CPU a start.
    if (body.validateSchema(schema) !== true) throw new Error(`invalid ${httpPart ?? ''} schema: ${body.errorsText(body.errors)}`)
    const compiled = lazy.defer(() => ajv.compile(schema))
    // Fastify reads `.errors` from the function it was given after a false result.
    const validate = Object.assign((data: unknown): boolean => {
      const fn = compiled()
      const valid = fn(data)
      validate.errors = fn.errors
      return valid
    }, { errors: null as ValidateFunction['errors'] })
    return validate
  }
  return { compiler, compileAll: lazy.compileAll }
}
