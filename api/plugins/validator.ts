import { Ajv } from 'ajv'
import ajvFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'

/**
 * Fastify's default validator coerces every part and drops unknown properties. Here only the
 * URL parts (strings by nature) are coerced: in a JSON body `"displayName": 42` is a client
 * bug, not "42". Unknown properties are refused: a typo such as `firmwareVersoin` must be a
 * 400, not a PATCH that changes nothing. (The pattern from Fastify's validation docs.)
 */
export function createValidatorCompiler (): FastifySchemaCompiler<object> {
  // allErrors stays off, as in Fastify's defaults: with it a crafted body costs one error each.
  const common = { useDefaults: true, removeAdditional: false, allErrors: false, addUsedSchema: false } as const
  const body = new Ajv({ ...common, coerceTypes: false })
  const url = new Ajv({ ...common, coerceTypes: 'array' })
  ajvFormats.default(body)
  ajvFormats.default(url)
  return ({ schema, httpPart }) => (httpPart === 'body' ? body : url).compile(schema)
}
