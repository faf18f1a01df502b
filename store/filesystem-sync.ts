import { spawn } from 'node:child_process'
import type { ChildProcessWithoutNullStreams } from 'node:child_process'
import type { Socket } from 'node:net'

export interface FilesystemSync {
  /** Resolves once everything written to the filesystem holding the directory is on stable storage (syncfs(2)). */
  sync (): Promise<void>
  /** Ends the helper; calls after this fail. */
  close (): Promise<void>
}

// One request a line on stdin, one answer a line on stdout, in order. `sync -f` runs in a
// subshell so its error message comes back as the answer instead of on Vigil's stderr.
const HELPER = 'while IFS= read -r _; do ' +
  'if out=$(sync -f -- "$1" 2>&1); then echo ok; else echo "failed: $(printf %s "$out" | tr "\\n" " ")"; fi; ' +
  'done'

/**
 * syncfs(2) on the filesystem holding `dir` (Node exposes no syncfs), through coreutils'
 * `sync -f` run by one long-lived shell: a call writes a line to the shell and waits for its
 * answer. Spawning `sync` from Vigil itself forked the whole process for each call (~200 MB:
 * ~4 ms of its CPU and ~8 ms of wall time a call, measured in docs/performance.md); the shell
 * forks only itself. The shell starts on the first call; one that dies fails the calls it
 * held, and the next call starts another.
 */
export function createFilesystemSync (dir: string): FilesystemSync {
  let helper: ChildProcessWithoutNullStreams | null = null
  let closed = false
  const waiting: Array<{ resolve: () => void, reject: (err: Error) => void }> = []

  const failAll = (err: Error): void => {
    for (const w of waiting.splice(0)) w.reject(err)
  }

  function start (): ChildProcessWithoutNullStreams {
    const child = spawn('sh', ['-c', HELPER, 'vigil-sync', dir], { stdio: ['pipe', 'pipe', 'pipe'] })
    let buffered = ''
    let stderr = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      buffered += chunk
      let end: number
      while ((end = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, end)
        buffered = buffered.slice(end + 1)
        const w = waiting.shift()
        if (w === undefined) continue
        if (line === 'ok') w.resolve()
        else w.reject(new Error(`sync -f ${dir} ${line}`))
      }
      idle(child)
    })
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-2000) })
    // A write to a shell that has just died: its 'exit' below fails the calls.
    child.stdin.on('error', () => {})
    const gone = (reason: string): void => {
      if (helper === child) helper = null
      failAll(new Error(`sync -f ${dir} failed: its helper shell ${reason}${stderr === '' ? '' : `: ${stderr.trim()}`}`))
    }
    child.on('error', (err) => { gone(`could not run (${err.message})`) })
    child.on('exit', (code, signal) => { gone(`exited (${signal ?? `code ${code}`})`) })
    return child
  }

  // The shell holds the event loop open only while a call waits for it. Its stdio pipes are
  // sockets (typed as plain streams).
  const pipesOf = (child: ChildProcessWithoutNullStreams): Socket[] => [child.stdin, child.stdout, child.stderr] as unknown[] as Socket[]
  function idle (child: ChildProcessWithoutNullStreams): void {
    if (waiting.length > 0) return
    child.unref()
    for (const pipe of pipesOf(child)) pipe.unref()
  }
  function busy (child: ChildProcessWithoutNullStreams): void {
    child.ref()
    for (const pipe of pipesOf(child)) pipe.ref()
  }

  return {
    sync () {
      if (closed) return Promise.reject(new Error(`sync -f ${dir}: closed`))
      helper ??= start()
      const child = helper
      return new Promise<void>((resolve, reject) => {
        waiting.push({ resolve, reject })
        busy(child)
        child.stdin.write('\n')
      })
    },
    async close () {
      closed = true
      const child = helper
      helper = null
      if (child === null || child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise<void>((resolve) => child.once('exit', () => { resolve() }))
      busy(child)
      // End of input ends the shell's loop after the call it is running, if any.
      child.stdin.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
  }
}
