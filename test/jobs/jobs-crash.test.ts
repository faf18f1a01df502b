import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import { createTestDatabase } from '../helpers/postgres.ts'
import { concatenate, sentences, speechDir, synthesize } from '../helpers/speech.ts'
import { spawnVigil, type VigilProcess } from '../helpers/vigil-process.ts'

// The real process SIGKILLed while transcriptions run, then restarted: every job must end
// succeeded or failed, none lost, none completed twice.
const token = 'jobs-crash-admin-token-0123456789abcdef'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

const database = await createTestDatabase()
const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-jobs-crash-'))
const dir = await speechDir()
const db = new pg.Pool({ connectionString: database.url, max: 2 })
let vigil: VigilProcess | null = null
t.teardown(async () => {
  if (vigil !== null && vigil.child.exitCode === null) {
    vigil.child.kill('SIGKILL')
    await vigil.exited
  }
  await db.end()
  await database.drop()
  await fs.rm(dataDir, { recursive: true, force: true })
  await fs.rm(dir, { recursive: true, force: true })
})

// A lease of 2 s: after the restart the killed run's jobs are reclaimed within seconds.
const env = { DATABASE_URL: database.url, VIGIL_ADMIN_TOKEN: token, WORKER_THREADS: '2', JOB_LEASE_SECONDS: '2' }
const api = (p: VigilProcess, url: string, init: RequestInit = {}): Promise<Response> =>
  fetch(`http://127.0.0.1:${p.httpPort}${url}`, { ...init, headers: { authorization: `Bearer ${token}`, ...init.headers } })

t.test('SIGKILL while jobs run, restart: every job ends once, succeeded or failed', async (t) => {
  // All eight sentences (about 25 s): the recognizer decodes a note in chunks cut at pauses
  // (5-15 s each) and reports progress per chunk, so this note reports progress while it runs.
  const parts = await Promise.all(sentences.map((s, i) => synthesize(s, dir, `p${i}`, { engineNative: true })))
  const audio = await fs.readFile(await concatenate(parts, path.join(dir, 'note.wav')))

  vigil = await spawnVigil(env, dataDir)
  const patient = await (await api(vigil, '/v1/patients', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ displayName: 'Crash Patient' }) })).json() as { id: string }
  const jobIds: string[] = []
  for (let i = 0; i < 6; i++) {
    const res = await api(vigil, `/v1/patients/${patient.id}/voice-notes`, { method: 'POST', headers: { 'content-type': 'audio/wav' }, body: audio })
    t.equal(res.status, 202)
    jobIds.push((await res.json() as { jobId: string }).jobId)
  }
  // Kill once two jobs are running and at least one recognizer has reported progress.
  for (let i = 0; ; i++) {
    const { rows } = await db.query("SELECT count(*)::int AS n, max(progress) AS p FROM jobs WHERE state = 'running'")
    if (rows[0].n === 2 && rows[0].p > 0) break
    if (i > 600) throw new Error('jobs never ran')
    await sleep(100)
  }
  vigil.child.kill('SIGKILL')
  await vigil.exited
  const { rows: atKill } = await db.query("SELECT id FROM jobs WHERE state = 'running'")
  t.ok(atKill.length >= 1, `${atKill.length} jobs were running when the process died`)

  vigil = await spawnVigil(env, dataDir)
  let states: Array<{ id: string, state: string, completions: number, attempts: number }> = []
  for (let i = 0; i < 1200; i++) {
    states = (await db.query('SELECT id, state, completions, attempts FROM jobs')).rows
    if (states.every((j) => j.state === 'succeeded' || j.state === 'failed')) break
    await sleep(100)
  }
  t.equal(states.length, 6, 'no job lost')
  for (const j of states) {
    t.ok(j.state === 'succeeded' || j.state === 'failed', `job ended (${j.state})`)
    t.equal(j.completions, j.state === 'succeeded' ? 1 : 0, 'completed at most once')
  }
  for (const { id } of atKill) {
    t.ok(states.find((j) => j.id === id)!.attempts >= 2, 'a job running at the kill was run again after the restart')
  }
  const { rows: notes } = await db.query(
    "SELECT v.transcript, j.state FROM voice_notes v JOIN jobs j ON j.id = v.job_id")
  t.ok(notes.every((n) => (n.state === 'succeeded') === (typeof n.transcript === 'string')), 'succeeded jobs, and only they, stored a transcript')
  t.equal((await db.query('SELECT count(*)::int AS n FROM voice_note_audio')).rows[0].n, 0, 'no audio left once the jobs ended')
  const res = await api(vigil, `/v1/patients/${patient.id}/voice-notes`)
  t.equal(((await res.json()) as { items: unknown[] }).items.length, 6)

  // SIGTERM while jobs run: they are given back (no attempt spent) and finish after the restart.
  const before = new Map((await db.query('SELECT id FROM jobs')).rows.map((r) => [r.id as string, true]))
  for (let i = 0; i < 4; i++) {
    const res = await api(vigil, `/v1/patients/${patient.id}/voice-notes`, { method: 'POST', headers: { 'content-type': 'audio/wav' }, body: audio })
    t.equal(res.status, 202)
  }
  for (let i = 0; ; i++) {
    const { rows } = await db.query("SELECT count(*)::int AS n FROM jobs WHERE state = 'running'")
    if (rows[0].n > 0) break
    if (i > 600) throw new Error('jobs never ran')
    await sleep(100)
  }
  vigil.child.kill('SIGTERM')
  t.equal(await vigil.exited, 0, 'stops cleanly while jobs run')
  const { rows: afterStop } = await db.query('SELECT id, state, attempts FROM jobs')
  const fresh = afterStop.filter((j) => !before.has(j.id))
  t.equal(fresh.filter((j) => j.state === 'running').length, 0, 'no job is left running')
  t.ok(fresh.filter((j) => j.state === 'queued').every((j) => j.attempts === 0), 'jobs given back spent no attempt')
  vigil = await spawnVigil(env, dataDir)
  for (let i = 0; i < 1200; i++) {
    const { rows } = await db.query("SELECT count(*)::int AS n FROM jobs WHERE state = 'succeeded' AND completions = 1")
    if (rows[0].n === 10) break
    await sleep(100)
  }
  t.same((await db.query('SELECT state, completions, count(*)::int AS n FROM jobs GROUP BY 1, 2')).rows, [{ state: 'succeeded', completions: 1, n: 10 }], 'all ten succeeded, once each')
  vigil.child.kill('SIGTERM')
  t.equal(await vigil.exited, 0, 'stops cleanly')
})
