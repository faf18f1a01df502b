import fs from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { defaults } from '../config/schema/defaults.ts'

// `npm run jobs -- list [--state S] [--type T]` and `npm run jobs -- follow <job id>`: a client
// of the HTTP API (it never reads the database), so it works against any Vigil it can reach.

const usage = `usage: npm run jobs -- list [--state queued|running|succeeded|failed|cancelled] [--type T] [--limit N]
       npm run jobs -- follow <job id>
       npm run jobs -- cancel <job id>

  --url URL      Vigil API (default $VIGIL_API_URL, else the port in $VIGIL_DATA_DIR/listening.json, else 3000)
  --token T      API token (default $VIGIL_TOKEN, else $VIGIL_ADMIN_TOKEN)
`

interface JobView {
  id: string
  type: string
  state: string
  progress: number
  attempts: number
  maxAttempts: number
  error: string | null
  result: unknown
  createdAt: string
  cancelRequested: boolean
}

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    state: { type: 'string' },
    type: { type: 'string' },
    limit: { type: 'string', default: '50' },
    help: { type: 'boolean', default: false }
  }
})

function fail (message: string, code = 2): never {
  process.stderr.write(`jobs: ${message}\n`)
  process.exit(code)
}

async function baseUrl (): Promise<string> {
  if (options.url !== undefined) return options.url.replace(/\/$/, '')
  if (process.env.VIGIL_API_URL !== undefined) return process.env.VIGIL_API_URL.replace(/\/$/, '')
  const dataDir = path.resolve(process.env.VIGIL_DATA_DIR ?? defaults.VIGIL_DATA_DIR)
  try {
    const listening = JSON.parse(await fs.readFile(path.join(dataDir, 'listening.json'), 'utf8')) as { httpPort: number, httpTls?: boolean }
    return `${listening.httpTls === true ? 'https' : 'http'}://127.0.0.1:${listening.httpPort}`
  } catch {
    return `http://127.0.0.1:${defaults.HTTP_PORT}`
  }
}

const token = options.token ?? process.env.VIGIL_TOKEN ?? process.env.VIGIL_ADMIN_TOKEN
if (options.help || positionals.length === 0) {
  process.stdout.write(usage)
  process.exit(options.help ? 0 : 2)
}
if (token === undefined || token === '') fail('an API token is needed: --token, $VIGIL_TOKEN or $VIGIL_ADMIN_TOKEN')
const base = await baseUrl()

async function call<T> (method: string, url: string): Promise<T> {
  let res: Response
  try {
    res = await fetch(`${base}${url}`, { method, headers: { authorization: `Bearer ${token!}` } })
  } catch (err) {
    fail(`cannot reach ${base}: ${(err as Error).message}`, 1)
  }
  const body = await res.json().catch(() => ({})) as T & { code?: string, message?: string }
  if (!res.ok) fail(`${res.status} ${body.code ?? ''} ${body.message ?? ''}`.trim(), 1)
  return body
}

/** `[#########-----------]  45%` */
function progressBar (progress: number, width = 30): string {
  const filled = Math.round(Math.min(1, Math.max(0, progress)) * width)
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(Math.round(progress * 100)).padStart(3)}%`
}

function line (job: JobView): string {
  return `${job.id}  ${job.type.padEnd(14)} ${job.state.padEnd(10)} ${String(Math.round(job.progress * 100)).padStart(3)}%  ` +
    `attempt ${job.attempts}/${job.maxAttempts}  ${job.createdAt}${job.error === null ? '' : `  error: ${job.error}`}`
}

const [command, id] = positionals
const terminal = new Set(['succeeded', 'failed', 'cancelled'])
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

if (command === 'list') {
  const query = new URLSearchParams({ limit: options.limit! })
  if (options.state !== undefined) query.set('state', options.state)
  if (options.type !== undefined) query.set('type', options.type)
  const page = await call<{ items: JobView[] }>('GET', `/v1/jobs?${query.toString()}`)
  if (page.items.length === 0) process.stdout.write('no jobs\n')
  for (const job of page.items) process.stdout.write(`${line(job)}\n`)
} else if (command === 'follow' || command === 'cancel') {
  if (id === undefined || !UUID.test(id)) fail(`${command} needs a job id\n${usage}`)
  if (command === 'cancel') {
    const job = await call<JobView>('DELETE', `/v1/jobs/${id}`)
    process.stdout.write(`${line(job)}\n`)
    process.exit(0)
  }
  // A TTY gets a bar redrawn in place; a pipe or log file gets a line per change.
  const tty = process.stdout.isTTY === true
  let last = ''
  for (;;) {
    const job = await call<JobView>('GET', `/v1/jobs/${id}`)
    const shown = tty ? `\r${progressBar(job.progress)} ${job.state}${job.cancelRequested ? ' (cancelling)' : ''}   ` : `${job.state} ${Math.round(job.progress * 100)}%`
    if (shown !== last) {
      process.stdout.write(tty ? shown : `${shown}\n`)
      last = shown
    }
    if (terminal.has(job.state)) {
      if (tty) process.stdout.write('\n')
      process.stdout.write(`${line(job)}\n`)
      if (job.result !== null) process.stdout.write(`result: ${JSON.stringify(job.result)}\n`)
      process.exit(job.state === 'succeeded' ? 0 : 1)
    }
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
} else {
  fail(`unknown command "${command ?? ''}"\n${usage}`)
}
