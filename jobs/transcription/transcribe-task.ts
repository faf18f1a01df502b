import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { loadEngine, markLowConfidence, type EngineSpec, type Transcript, type TranscriptionEngine } from './engine.ts'
import { normalizeWav } from './normalize-audio.ts'
import { readWavInfo } from './wav.ts'

/**
 * The Piscina task: one voice note's audio in, its transcript out. It runs in a pool thread
 * (WORKER_THREADS of them), so at most that many recognitions run at once; the CPU-heavy
 * recognizer itself is a child process the thread waits on, and the thread kills it when the
 * job is cancelled.
 *
 * `control` is shared with the runner (no message round trips): [0] is set to 1 to cancel,
 * [1] holds the progress in thousandths.
 */
export interface TranscribeTask {
  audio: Uint8Array
  engine: EngineSpec
  control: SharedArrayBuffer
}

export const CONTROL_CANCEL = 0
export const CONTROL_PROGRESS = 1
export const CONTROL_SLOTS = 2

const engines = new Map<string, Promise<TranscriptionEngine>>()

export default async function transcribeTask ({ audio, engine: spec, control }: TranscribeTask): Promise<Transcript & { engine: string }> {
  const flags = new Int32Array(control)
  const key = JSON.stringify(spec)
  let enginePromise = engines.get(key)
  if (enginePromise === undefined) {
    enginePromise = loadEngine(spec)
    engines.set(key, enginePromise)
    enginePromise.catch(() => engines.delete(key))
  }
  const engine = await enginePromise
  const controller = new AbortController()
  const watch = setInterval(() => { if (Atomics.load(flags, CONTROL_CANCEL) === 1) controller.abort(new Error('cancelled')) }, 50)
  // Audio is PHI: a private directory, removed whatever happens.
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-voice-'))
  try {
    const buf = Buffer.from(audio.buffer, audio.byteOffset, audio.byteLength)
    const input = path.join(dir, 'input.wav')
    await fs.writeFile(input, buf, { mode: 0o600 })
    let wav = input
    if (!readWavInfo(buf).isEngineNative) {
      wav = path.join(dir, 'engine.wav')
      await normalizeWav(input, wav, controller.signal)
    }
    const transcript = await engine.transcribe(wav, {
      signal: controller.signal,
      onProgress: (p) => Atomics.store(flags, CONTROL_PROGRESS, Math.round(Math.min(1, Math.max(0, p)) * 1000))
    })
    return { ...transcript, words: markLowConfidence(transcript.words), engine: engine.name }
  } finally {
    clearInterval(watch)
    await fs.rm(dir, { recursive: true, force: true })
  }
}
