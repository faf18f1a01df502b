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
  /** Threads at most (WORKER_THREADS). */
  threads: number
  /** Tasks waiting beyond this are refused at once ('Task queue is at limit') instead of queued without bound. */
  maxQueue?: number
  /**
   * Threads kept alive while idle (default 1; 0 lets an idle pool hold no thread). A thread
   * costs ~20-40 MB resident under tsx and starting one takes a second or more, so threads above
   * this end only after idleTimeoutMs without a task.
   */
  minThreads?: number
  /** How long a thread above minThreads may sit idle before it ends (default 60 s). */
  idleTimeoutMs?: number
  /**
   * Start no thread until the first task (then keep minThreads): a process that never gets this
   * kind of task never pays a thread's start (a second or more under tsx) or its memory.
   */
  startOnFirstTask?: boolean
}

export interface WorkerPool<Input, Output> {
  run (input: Input, options?: { signal?: AbortSignal }): Promise<Output>
  readonly threads: number
  close (): Promise<void>
}

/** One Piscina pool for one kind of task. startWorkers (the composition root) owns them and closes them last. */
export function createWorkerPool<Input, Output> (options: WorkerPoolOptions): WorkerPool<Input, Output> {
  const threads = Math.max(1, Math.floor(options.threads))
  const start = (): Piscina<Input, Output> => new Piscina<Input, Output>({
    filename: options.filename,
    minThreads: Math.min(threads, Math.max(0, Math.floor(options.minThreads ?? 1))),
    idleTimeout: options.idleTimeoutMs ?? 60_000,
    maxThreads: threads,
    maxQueue: options.maxQueue ?? threads * 64,
    // One task per thread: the tasks here are CPU-bound.
    concurrentTasksPerWorker: 1
  })
  let pool = options.startOnFirstTask === true ? null : start()
  let closed = false
  return {
    threads,
    async run (input, runOptions) {
      if (closed) throw new Error('worker pool is closed')
      pool ??= start()
      return await pool.run(input, runOptions?.signal === undefined ? undefined : { signal: runOptions.signal })
    },
    async close () {
      closed = true
      await pool?.close()
    }
  }
}
