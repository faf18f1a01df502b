/**
 * Compilation deferred to first use, with a way to force all of it: what the request validators
 * (validator.ts) and response serializers (serializer.ts) share. Fastify compiles every route's
 * schemas when the app gets ready; most processes never see most routes, so each is compiled on
 * its first request instead. test/api/api-docs.test.ts calls compileAll(), so no schema can fail
 * only in production.
 */
export interface LazyCompilations {
  /** `compile`, run once on the first call of the returned function, which then returns its result. */
  defer<F> (compile: () => F): () => F
  /** Compiles everything not compiled yet; returns how many. */
  compileAll (): number
}

export function createLazyCompilations (): LazyCompilations {
  const pending = new Set<() => unknown>()
  return {
    defer<F> (compile: () => F): () => F {
      let compiled: { value: F } | undefined
      const get = (): F => {
        if (compiled === undefined) {
          compiled = { value: compile() }
          pending.delete(get)
        }
        return compiled.value
      }
      pending.add(get)
      return get
    },
    compileAll () {
      const all = [...pending]
      for (const get of all) get()
      return all.length
    }
  }
}
