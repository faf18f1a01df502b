import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pino from 'pino'
import { createJobQueue } from '../jobs/job-queue.ts'
import { startJobs } from '../jobs/start-jobs.ts'
import { readWavInfo } from '../jobs/transcription/wav.ts'
import { openDatabase } from '../store/database.ts'
import { createKeyring, newKey } from '../crypto/field-encryption.ts'
import { createVoiceNoteStore } from '../jobs/voice-notes.ts'
import { concatenate, sentences, speechDir, synthesize } from '../test/helpers/speech.ts'
import { createTestDatabase } from '../test/helpers/postgres.ts'

// `npm run bench:jobs`: voice-note transcriptions per minute with 1, 2 and N worker threads
// (N = the machine's cores), on the same synthesized note, through the real queue, runner,
// Piscina pool and pocketsphinx. Each row gets a fresh database. Prints a table and writes
// bench/results/jobs-<timestamp>.json.

const { values: args } = parseArgs({
  options: {
    jobs: { type: 'string', default: '12' },
    threads: { type: 'string' },
    sentences: { type: 'string', default: '4' },
    help: { type: 'boolean', default: false }
  }
})
if (args.help) {
  process.stdout.write(`usage: npm run bench:jobs -- [--jobs 12] [--threads 1,2,4] [--sentences 4]
  --jobs N         transcription jobs per row (default 12)
  --threads LIST   worker thread counts (default 1, 2 and the core count)
  --sentences N    sentences in the note (default 4: about 11 s of speech)
Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Debian's pocketsphinx, festival and sox.\n`)
  process.exit(0)
}
const cores = os.availableParallelism()
const threadCounts = args.threads !== undefined
  ? args.threads.split(',').map(Number)
  : [...new Set([1, 2, cores])].sort((a, b) => a - b)
const jobCount = Number(args.jobs)
// fatal: dropping each row's database ends the pool's last idle connection, which pg reports as an error.
const log = pino({ level: 'fatal' })

const dir = await speechDir()
const parts = await Promise.all(sentences.slice(0, Number(args.sentences)).map((s, i) => synthesize(s, dir, `b${i}`, { engineNative: true })))
const audio = await fs.readFile(await concatenate(parts, path.join(dir, 'note.wav')))
const info = readWavInfo(audio)

/**
 * CPU seconds used by this process (its threads) and its waited-for children (the recognizers,
 * sox): /proc/self/stat utime, stime, cutime, cstime (proc(5)), in clock ticks (100 per second
 * on Linux). Unlike wall time it does not depend on what else the machine runs.
 */
async function cpuSeconds (): Promise<number> {
  const stat = await fs.readFile('/proc/self/stat', 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state): utime is field 14 → index 11.
  return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100
}

interface Row { threads: number, jobs: number, seconds: number, jobsPerMinute: number, audioSecondsPerSecond: number, cpuSecondsPerJob: number, failed: number }
const rows: Row[] = []
try {
  for (const threads of threadCounts) {
    const database = await createTestDatabase()
    const db = await openDatabase({ databaseUrl: database.url, dataDir: '', log })
    try {
      const { rows: [patient] } = await db.pool.query("INSERT INTO patients (id, display_name) VALUES (gen_random_uuid(), 'bench') RETURNING id")
      const keyring = createKeyring('k1', new Map([['k1', newKey()]]), newKey())
      const store = createVoiceNoteStore(db.pool, createJobQueue({ pool: db.pool }), keyring)
      for (let i = 0; i < jobCount; i++) await store.create({ patientId: patient.id, authorTokenId: 'bench', authorUserId: null, audio, info })
      const cpuBefore = await cpuSeconds()
      const started = performance.now()
      const jobs = await startJobs({ pool: db.pool, workerThreads: threads, engine: { kind: 'pocketsphinx' }, leaseMs: 60_000, maxAttempts: 1, log, keyring, pollIntervalMs: 100 })
      let ended = { succeeded: 0, failed: 0 }
      for (;;) {
        const counts = await jobs.queue.counts()
        ended = { succeeded: counts.succeeded, failed: counts.failed }
        if (counts.succeeded + counts.failed + counts.cancelled === jobCount) break
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      const seconds = (performance.now() - started) / 1000
      await jobs.close()
      const cpu = await cpuSeconds() - cpuBefore
      const row = {
        threads,
        jobs: jobCount,
        seconds: Number(seconds.toFixed(2)),
        jobsPerMinute: Number((ended.succeeded / seconds * 60).toFixed(1)),
        audioSecondsPerSecond: Number((ended.succeeded * info.durationMs / 1000 / seconds).toFixed(2)),
        cpuSecondsPerJob: Number((cpu / jobCount).toFixed(2)),
        failed: ended.failed
      }
      rows.push(row)
      process.stdout.write(`threads ${threads}: ${row.jobsPerMinute} jobs/min\n`)
    } finally {
      await db.close()
      await database.drop()
    }
  }
} finally {
  await fs.rm(dir, { recursive: true, force: true })
}

const load = os.loadavg()[0]!.toFixed(1)
process.stdout.write(`\nvoice-note transcription, ${(info.durationMs / 1000).toFixed(1)} s of speech per job, ${cores} cores, load average ${load} at the end\n`)
process.stdout.write('| WORKER_THREADS | jobs | seconds | jobs/min | speech s per s | CPU s per job | failed |\n|---:|---:|---:|---:|---:|---:|---:|\n')
for (const r of rows) process.stdout.write(`| ${r.threads} | ${r.jobs} | ${r.seconds} | ${r.jobsPerMinute} | ${r.audioSecondsPerSecond} | ${r.cpuSecondsPerJob} | ${r.failed} |\n`)
const perJob = rows.reduce((sum, r) => sum + r.cpuSecondsPerJob, 0) / Math.max(1, rows.length)
process.stdout.write(`CPU per job ${perJob.toFixed(2)} s: an idle machine's ceiling is about ${(60 / perJob).toFixed(0)} jobs/min per core\n`)
const outDir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results')
await fs.mkdir(outDir, { recursive: true })
const out = path.join(outDir, `jobs-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
await fs.writeFile(out, JSON.stringify({ cores, loadAverage: os.loadavg(), noteSeconds: info.durationMs / 1000, rows }, null, 2))
process.stdout.write(`written to ${out}\n`)
