import fastJsonStringify from 'fast-json-stringify'
import type { FastifySerializerCompiler } from 'fastify'
import { createLazyCompilations } from './lazy-compile.ts'

/**
 * Response serializers compiled on a route's first answer, as the validators are
 * (plugins/validator.ts): Fastify compiles every route's response schemas with
 * fast-json-stringify when the app gets ready, about 180 ms of CPU at every start (profiled:
 * 894 ms over five test starts) for routes most processes never answer. The serializer is the
 * same fast-json-stringify function Fastify builds by default (no shared schemas: the API adds
 * none with addSchema), only later. test/api/api-docs.test.ts compiles every route's
 * serializers, so none can fail only in production.
 */
export interface LazySerializer {
  compiler: FastifySerializerCompiler<unknown>
  /** Compiles every serializer not compiled yet; returns how many were compiled (tests). */
  compileAll (): number
}

export function createSerializerCompiler (): LazySerializer {
  const lazy = createLazyCompilations()
  const compiler: FastifySerializerCompiler<unknown> = ({ schema }) => {
    const compiled = lazy.defer(() => fastJsonStringify(schema as Parameters<typeof fastJsonStringify>[0]))
    return (data: unknown): string => compiled()(data)
  }
  return { compiler, compileAll: lazy.compileAll }
}
