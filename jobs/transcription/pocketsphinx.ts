import { spawn } from 'node:child_process'
import path from 'node:path'
import readline from 'node:readline'
import type { TranscribedWord, Transcript, TranscriptionEngine } from './engine.ts'
import { chunkBoundaries } from './chunks.ts'
import { clinicalModelFiles } from './language-model.ts'
import { pcm16WavHeader, readWavInfo } from './wav.ts'
import fs from 'node:fs/promises'

/** Debian's pocketsphinx-en-us package: the acoustic model (en-us/), language model and dictionary. */
export const defaultModelDir = '/usr/share/pocketsphinx/model/en-us'

// Tokens pocketsphinx prints that are not words: sentence marks, silence, fillers, empty hypotheses.
const NOT_WORDS = /^(<s>|<\/s>|<sil>|\[[A-Z_]+\]|\+\+.*\+\+|\(NULL\))$/

/**
 * One line of `pocketsphinx_continuous -time yes` output: `word start end posterior`
 * (seconds). Hypothesis lines (the utterance's words alone) give null. Alternate
 * pronunciations print as `word(2)`.
 */
export function parseTimedWordLine (line: string): TranscribedWord | 'filler' | null {
  const m = /^(\S+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)$/.exec(line.trim())
  if (m === null) return null
  const token = m[1]!.replace(/\(\d+\)$/, '')
  if (NOT_WORDS.test(token)) return 'filler'
  return {
    word: token,
    startMs: Math.round(Number(m[2]) * 1000),
    endMs: Math.round(Number(m[3]) * 1000),
    // The posterior is a probability; rounding in pocketsphinx can print 1.0001.
    confidence: Math.min(1, Number(m[4]))
  }
}

/** Words → transcript; the overall confidence is the duration-weighted mean of the words'. */
export function transcriptOf (words: TranscribedWord[]): Transcript {
  let weight = 0
  let sum = 0
  for (const w of words) {
    const d = Math.max(1, w.endMs - w.startMs)
    weight += d
    sum += d * (w.confidence ?? 0)
  }
  return { text: words.map((w) => w.word).join(' '), words, ...(weight > 0 ? { confidence: sum / weight } : {}) }
}

/** Chunks of about this length are decoded one after another (progress is per chunk). */
export const DEFAULT_CHUNK_SECONDS = 10

/**
 * CMU PocketSphinx (Debian's 0.8+5prealpha) through `pocketsphinx_continuous`. It prints
 * nothing until it exits, so the audio is cut at pauses into chunks of about `chunkSeconds`
 * (chunks.ts), each decoded by its own process, and progress is the decoded chunks' share of
 * the duration. `languageModel: 'clinical'` (default) decodes with the model and dictionary
 * built from the project's clinical corpus (language-model.ts); `generic` with
 * pocketsphinx-en-us's own.
 */
export function createPocketsphinxEngine (options: { modelDir?: string, binary?: string, languageModel?: 'clinical' | 'generic', chunkSeconds?: number } = {}): TranscriptionEngine {
  const modelDir = options.modelDir ?? defaultModelDir
  const binary = options.binary ?? 'pocketsphinx_continuous'
  const languageModel = options.languageModel ?? 'clinical'
  const chunkSeconds = options.chunkSeconds ?? DEFAULT_CHUNK_SECONDS
  const cmudict = path.join(modelDir, 'cmudict-en-us.dict')
  const models = languageModel === 'generic'
    ? Promise.resolve({ lm: path.join(modelDir, 'en-us.lm.bin'), dict: cmudict })
    : clinicalModelFiles(cmudict)
  models.catch(() => {})

  async function decode (wavPath: string, signal: AbortSignal | undefined, offsetMs: number): Promise<TranscribedWord[]> {
    const { lm, dict } = await models
    const child = spawn(binary, [
      '-infile', wavPath, '-time', 'yes', '-logfn', '/dev/null',
      '-hmm', path.join(modelDir, 'en-us'), '-lm', lm, '-dict', dict
    ], { stdio: ['ignore', 'pipe', 'ignore'] })
    const kill = (): void => { child.kill('SIGKILL') }
    signal?.addEventListener('abort', kill, { once: true })
    const words: TranscribedWord[] = []
    const exited = new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', (code) => resolve(code))
    })
    try {
      for await (const line of readline.createInterface({ input: child.stdout })) {
        const parsed = parseTimedWordLine(line)
        if (parsed !== null && parsed !== 'filler') words.push({ ...parsed, startMs: parsed.startMs + offsetMs, endMs: parsed.endMs + offsetMs })
      }
      const code = await exited
      signal?.throwIfAborted()
      if (code !== 0) throw new Error(`pocketsphinx_continuous exited with code ${String(code)}`)
    } finally {
      signal?.removeEventListener('abort', kill)
    }
    return words
  }

  return {
    name: languageModel === 'generic' ? 'pocketsphinx' : 'pocketsphinx-clinical',
    async transcribe (wavPath, { onProgress, signal }) {
      signal?.throwIfAborted()
      const file = await fs.readFile(wavPath)
      const info = readWavInfo(file)
      if (!info.isEngineNative) throw new Error('pocketsphinx needs 16 kHz mono 16-bit PCM (normalize the audio first)')
      const data = file.subarray(info.dataOffset, info.dataOffset + info.dataBytes)
      const samples = new Int16Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
      const chunks = chunkBoundaries(samples, info.sampleRate, { targetSeconds: chunkSeconds })
      const words: TranscribedWord[] = []
      onProgress?.(0)
      for (const [i, [start, end]] of chunks.entries()) {
        // Next to the input: the caller's private directory, removed with it.
        const chunkPath = chunks.length === 1 ? wavPath : `${wavPath}.chunk${i}.wav`
        if (chunkPath !== wavPath) {
          const bytes = data.subarray(start * 2, end * 2)
          await fs.writeFile(chunkPath, Buffer.concat([pcm16WavHeader(bytes.length, info.sampleRate, 1), bytes]), { mode: 0o600 })
        }
        try {
          words.push(...await decode(chunkPath, signal, Math.round(start / info.sampleRate * 1000)))
        } finally {
          if (chunkPath !== wavPath) await fs.rm(chunkPath, { force: true })
        }
        onProgress?.(end / samples.length)
      }
      return transcriptOf(words)
    }
  }
}
