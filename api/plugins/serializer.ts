import fastJsonStringify from 'fast-json-stringify'
import type { FastifySerializerCompiler } from 'fastify'

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
  const pending = new Set<() => (data: unknown) => string>()
  const compiler: FastifySerializerCompiler<unknown> = ({ schema }) => {
    let compiled: ((data: unknown) => string) | undefined
    const compile = (): (data: unknown) => string => {
      compiled ??= fastJsonStringify(schema as Parameters<typeof fastJsonStringify>[0])
      pending.delete(compile)
      return compiled
    }
    pending.add(compile)
    return (data: unknown): string => (compiled ?? compile())(data)
  }
  return {
    compiler,
    compileAll () {
      const all = [...pending]
      for (const compile of all) compile()
      return all.length
    }
  }
}
