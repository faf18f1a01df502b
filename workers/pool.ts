import { Piscina } from 'piscina'

/**
 * A task file next to the caller, with the caller's own extension: `.ts` under tsx or tap,
 * `.js` once compiled (Piscina loads the file in a worker thread that inherits the loader).
 */
export function taskFile (callerUrl: string, name: string): string {
  const ext = new URL(callerUrl).pathname.endsWith('.ts') ? '.ts' : '.js'
  return new URL(`./${name}${ext}`, callerUrl).href
}

export interface WorkerPoolOptions {
  /** From taskFile(); the file's default export is the task: (input) => output. */
  filename: string
  /** Threads at most (WORKER_THREADS); at least one is kept alive. */
  threads: number
  /** Tasks waiting beyond this are refused at once ('Task queue is at limit') instead of queued without bound. */
  maxQueue?: number
  /**
   * Threads kept alive while idle (default 1). Piscina ends idle threads above this at once, and
   * starting one costs seconds under tsx: latency-bound pools (alert evaluation) keep them all.
   */
  minThreads?: number
}

export interface WorkerPool<Input, Output> {
  run (input: Input, options?: { signal?: AbortSignal }): Promise<Output>
  readonly threads: number
  close (): Promise<void>
}

/** One Piscina pool for one kind of task. startWorkers (the composition root) owns them and closes them last. */
export function createWorkerPool<Input, Output> (options: WorkerPoolOptions): WorkerPool<Input, Output> {
  const threads = Math.max(1, Math.floor(options.threads))
  const pool = new Piscina<Input, Output>({
    filename: options.filename,
    minThreads: Math.min(threads, Math.max(1, Math.floor(options.minThreads ?? 1))),
    maxThreads: threads,
    maxQueue: options.maxQueue ?? threads * 64,
    // One task per thread: the tasks here are CPU-bound.
    concurrentTasksPerWorker: 1
  })
  return {
    threads,
    async run (input, runOptions) {
      return await pool.run(input, runOptions?.signal === undefined ? undefined : { signal: runOptions.signal })
    },
    async close () {
      await pool.close()
    }
  }
}
