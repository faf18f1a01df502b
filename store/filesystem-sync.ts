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
// subshell so its error message comes back as the answer instead of on Vigil's stderr; printf,
// not echo, which in dash would interpret a backslash in that message (a path) and could cut the
// line short. Signals to the process group (Ctrl-C, a service manager's SIGTERM) are left to
// Vigil, which syncs as it shuts down: the shell ends when its input does, also when Vigil dies.
const HELPER = "trap '' INT TERM HUP; while IFS= read -r _; do " +
  'if out=$(sync -f -- "$1" 2>&1); then printf \'ok\\n\'; ' +
  'else printf \'failed: %s\\n\' "$(printf %s "$out" | tr \'\\n\' \' \')"; fi; ' +
  'done'

interface Waiter { resolve: () => void, reject: (err: Error) => void }

interface Helper {
  child: ChildProcessWithoutNullStreams
  /** The calls this shell has been asked and not answered, oldest first: its own, so no other shell's answer settles them. */
  waiting: Waiter[]
}

/**
 * syncfs(2) on the filesystem holding `dir` (Node exposes no syncfs), through coreutils'
 * `sync -f` run by one long-lived shell: a call writes a line to the shell and waits for its
 * answer. Spawning `sync` from Vigil itself forked the whole process for each call (200–300 MB:
 * 9–12 ms of its CPU, as much again in the child, 15–17 ms of wall time; through the shell 0.2
 * ms, 4 ms and 4–5 ms: docs/performance.md); the shell forks only itself. The shell starts on the first call; one that dies fails the calls it
 * held, and the next call starts another.
 */
export function createFilesystemSync (dir: string): FilesystemSync {
  let current: Helper | null = null
  let closed = false

  function start (): Helper {
    const child = spawn('sh', ['-c', HELPER, 'vigil-sync', dir], { stdio: ['pipe', 'pipe', 'pipe'] })
    const helper: Helper = { child, waiting: [] }
    let buffered = ''
    let stderr = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      buffered += chunk
      let end: number
      while ((end = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, end)
        buffered = buffered.slice(end + 1)
        const w = helper.waiting.shift()
        if (w === undefined) continue
        if (line === 'ok') w.resolve()
        else w.reject(new Error(`sync -f ${dir} ${line}`))
      }
      idle(helper)
    })
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk: string) => { stderr = (stderr + chunk).slice(-2000) })
    // A write to a shell that has just died: its 'close' below fails the call.
    child.stdin.on('error', () => {})
    let why = ''
    const gone = (): void => {
      if (current === helper) current = null
      const err = new Error(`sync -f ${dir} failed: its helper shell ${why}${stderr === '' ? '' : `: ${stderr.trim()}`}`)
      for (const w of helper.waiting.splice(0)) w.reject(err)
    }
    // A dead shell takes no new calls; the ones it held fail once its output is all read
    // ('close'), so an answer it gave before dying still counts.
    child.on('exit', (code, signal) => {
      why = `exited (${signal ?? `code ${code}`})`
      if (current === helper) current = null
    })
    child.on('error', (err) => {
      why = `could not run (${err.message})`
      gone()
    })
    child.on('close', gone)
    return helper
  }

  // The shell holds the event loop open only while a call waits for it. Its stdio pipes are
  // sockets (typed as plain streams).
  const pipesOf = (child: ChildProcessWithoutNullStreams): Socket[] => [child.stdin, child.stdout, child.stderr] as unknown[] as Socket[]
  function idle (helper: Helper): void {
    if (helper.waiting.length > 0) return
    helper.child.unref()
    for (const pipe of pipesOf(helper.child)) pipe.unref()
  }
  function busy (helper: Helper): void {
    helper.child.ref()
    for (const pipe of pipesOf(helper.child)) pipe.ref()
  }

  return {
    sync () {
      if (closed) return Promise.reject(new Error(`sync -f ${dir}: closed`))
      current ??= start()
      const helper = current
      return new Promise<void>((resolve, reject) => {
        helper.waiting.push({ resolve, reject })
        busy(helper)
        helper.child.stdin.write('\n')
      })
    },
    async close () {
      closed = true
      const helper = current
      current = null
      if (helper === null || helper.child.exitCode !== null || helper.child.signalCode !== null) return
      const ended = new Promise<void>((resolve) => helper.child.once('close', () => { resolve() }))
      busy(helper)
      // End of input ends the shell's loop after the calls it was asked, which are answered first.
      helper.child.stdin.end()
      const timer = setTimeout(() => helper.child.kill('SIGKILL'), 30_000)
      await ended
      clearTimeout(timer)
    }
  }
}
